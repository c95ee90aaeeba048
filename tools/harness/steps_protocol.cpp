// Steps that speak the protocol on the current connection: negotiate, typed requests, raw
// frames, expect-reply, expect-request, reply, expect-close, expect-silence.
#include <cstring>

#include "protocol/capabilities.hpp"
#include "tools/harness/runner_state.hpp"

namespace vfu::harness {

namespace {

const char* default_caps = R"({"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576}})";

std::string join(const std::vector<std::string>& v) {
  std::string m;
  for (auto& p : v) m += (m.empty() ? "" : "; ") + p;
  return m;
}

uint64_t hdr_field(const proto::header& h, const std::string& k) {
  if (k == "msg_id") return h.msg_id;
  if (k == "command") return h.command;
  if (k == "msg_size") return h.msg_size;
  if (k == "flags") return h.flags;
  return h.error_no;
}

void set_hdr_field(proto::header& h, const std::string& k, uint64_t v) {
  if (k == "msg_id") h.msg_id = uint16_t(v);
  else if (k == "command") h.command = uint16_t(v);
  else if (k == "msg_size") h.msg_size = uint32_t(v);
  else if (k == "flags") h.flags = uint32_t(v);
  else h.error_no = uint32_t(v);
}

std::string hdr_text(const std::string& k, uint64_t v) {
  if (k == "flags") return format_flags(v, header_flag_names());
  if (k == "command") return std::string(proto::command_name(uint16_t(v))) + " (" + std::to_string(v) + ")";
  if (k == "error_no") return errno_text(int(v));
  return format_number(v);
}

std::string brief(const proto::header& h) {
  char id[16];
  std::snprintf(id, sizeof id, "0x%04x", h.msg_id);
  std::string s = std::string(proto::command_name(h.command)) + (h.is_reply() ? " reply" : " request") + " id=" + id;
  if (h.is_error()) s += " " + errno_text(int(h.error_no));
  return s;
}

/// decode(), except that an error reply to a command number we do not know (the answer to
/// our own unknown command) is still an error reply, not a decoding failure.
proto::result<proto::message> decode_frame(const proto::frame& f, const proto::quirks& q) {
  auto m = proto::decode(f, q);
  auto h = f.hdr();
  if (!m && h.is_reply() && h.is_error() && !proto::is_known_command(h.command) && h.msg_size == proto::header_size)
    return proto::message{proto::error_reply{h.command, h.error_no, {}}};
  return m;
}

}  // namespace

bool runner::need_conn(outcome& o) const {
  if (!conn_) {
    o = outcome::failure("not connected (connect or accept first)");
    return false;
  }
  return true;
}

void runner::log_frame(const char* dir, const proto::frame& f) const {
  if (!o_.verbose) return;
  if (f.bytes.size() < proto::header_size) {
    out_ << "    " << dir << " " << f.bytes.size() << " bytes (shorter than a header): "
         << format_bytes(f.bytes) << "\n";
    return;
  }
  auto h = f.hdr();
  out_ << "    " << dir << " " << proto::describe(h, f.fds.size());
  if (h.msg_size != f.bytes.size()) {
    out_ << " | " << f.bytes.size() << " bytes on the wire: " << format_bytes(f.bytes) << "\n";
    return;
  }
  auto m = decode_frame(f, quirks_);
  if (!m) {
    out_ << " | does not decode (" << m.err().message() << "): " << format_bytes(f.bytes) << "\n";
    return;
  }
  out_ << " |";
  for (auto& [k, v] : flatten(*m)) out_ << " " << k << "=" << to_string(v);
  out_ << "\n";
}

bool runner::shape_frame(const step& s, proto::frame& f, std::string& err) const {
  std::string v;
  std::vector<uint8_t> payload(f.bytes.begin() + long(proto::header_size), f.bytes.end());
  if (auto* p = s.opt("payload")) {
    if (!resolve(*p, v, err) || !parse_bytes(v, payload, err)) return false;
  }
  if (auto* t = s.opt("truncate")) {
    uint64_t n = 0;
    if (!resolve(*t, v, err) || !parse_number(v, n, err)) return false;
    if (n < payload.size()) payload.resize(size_t(n));
  }
  if (auto* t = s.opt("trailing")) {
    std::vector<uint8_t> extra;
    if (!resolve(*t, v, err) || !parse_bytes(v, extra, err)) return false;
    payload.insert(payload.end(), extra.begin(), extra.end());
  }
  proto::header h = f.hdr();
  h.msg_size = uint32_t(proto::header_size + payload.size());
  for (auto& [k, raw] : s.hdr) {
    uint64_t x = 0;
    if (!resolve(raw, v, err) || !parse_hdr_value(k, v, x, err)) return false;
    set_hdr_field(h, k, x);
  }
  f.bytes.resize(proto::header_size);
  f.bytes.insert(f.bytes.end(), payload.begin(), payload.end());
  f.set_hdr(h);
  return true;
}

bool runner::send_options_of(const step& s, io::send_options& so, std::string& err) const {
  std::string v;
  if (auto* p = s.opt("split")) {
    if (!resolve(*p, v, err) || !parse_pieces(v, so.pieces, err)) return false;
    so.gap = std::chrono::milliseconds(10);  // so that the peer reads each piece on its own
  }
  if (auto* g = s.opt("gap")) {
    if (!resolve(*g, v, err) || !parse_duration(v, so.gap, err)) return false;
  }
  if (auto* c = s.opt("cut")) {
    uint64_t n = 0;
    if (!resolve(*c, v, err) || !parse_number(v, n, err)) return false;
    so.cut = size_t(n);
  }
  if (auto* m = s.opt("may_close")) {
    if (!resolve(*m, v, err) || !parse_bool(v, so.may_close, err)) return false;
  }
  return true;
}

std::string runner::transmit(const step& s, proto::frame& f) {
  std::string err;
  io::send_options so;
  if (!send_options_of(s, so, err)) return err;
  if (auto* spec = s.opt("fds"); spec && !collect_fds(*spec, f.fds, err)) return err;
  log_frame(">", f);
  err = conn_->send(f.bytes, f.fds, so, io::after(step_timeout(s)));
  if (!err.empty()) return err;
  bool whole = !so.cut || *so.cut >= f.bytes.size();
  if (whole && f.bytes.size() >= proto::header_size) {
    auto h = f.hdr();
    // Only a whole, well-framed command can be answered.
    if (h.is_command() && !h.no_reply() && h.msg_size == f.bytes.size())
      outstanding_.push_back({h.msg_id, h.command, io::clock::now()});
  }
  f.fds.clear();  // our copies; the peer has its own
  return "";
}

void runner::check_hdr(const step& s, const proto::header& h, size_t, std::vector<std::string>& problems) const {
  for (auto& [k, raw] : s.hdr) {
    std::string v, err;
    uint64_t want = 0;
    if (!resolve(raw, v, err) || !parse_hdr_value(k, v, want, err)) {
      problems.push_back(err);
      continue;
    }
    uint64_t got = hdr_field(h, k);
    if (got != want) problems.push_back("hdr." + k + ": expected " + hdr_text(k, want) + ", got " + hdr_text(k, got));
  }
}

void runner::check_fields(msg_kind k, const proto::message& m, const arg_list& want, std::vector<std::string>& problems) const {
  if (want.empty()) return;
  auto got = flatten(m);
  for (auto& [name, raw] : want) {
    std::string v, err;
    const field_info* fi = find_field(k, name);
    field_value expected;
    if (!fi || !resolve(raw, v, err) || !parse_field_value(*fi, v, expected, err)) {
      problems.push_back(name + ": " + (fi ? err : "unknown field"));
      continue;
    }
    const field_value* actual = nullptr;
    for (auto& [gn, gv] : got)
      if (gn == name) actual = &gv;
    if (!actual) problems.push_back(name + ": expected " + to_string(expected) + ", absent");
    else if (!same_value(name, expected, *actual))
      problems.push_back(name + ": expected " + to_string(expected) + ", got " + to_string(*actual));
  }
}

void runner::save_vars(const step& s, const proto::header& h, size_t nfds, const proto::message* m,
                       std::vector<std::string>& problems) {
  for (auto& [var, field] : s.saves) {
    if (field == "errno") vars_[var] = std::to_string(h.error_no);
    else if (field == "fds") vars_[var] = std::to_string(nfds);
    else if (field.rfind("hdr.", 0) == 0) vars_[var] = std::to_string(hdr_field(h, field.substr(4)));
    else {
      bool found = false;
      if (m)
        for (auto& [n, v] : flatten(*m))
          if (n == field) {
            found = true;
            if (v.kind == field_kind::bytes) vars_[var] = proto::to_hex({v.bytes.data(), v.bytes.size()});
            else if (v.kind == field_kind::text) vars_[var] = v.text;
            else vars_[var] = std::to_string(v.num);
          }
      if (!found) problems.push_back("save." + var + ": the message has no field " + field);
    }
  }
}

// ---- steps -----------------------------------------------------------------------------------
outcome runner::negotiate(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  proto::version_request v;
  v.major = 0;
  v.minor = proto::our_minor;
  v.caps_json = default_caps;
  std::string val, err;
  uint64_t n = 0;
  if (auto* x = s.opt("caps_json")) {
    if (!resolve(*x, val, err)) return outcome::failure(err);
    v.caps_json = val;
  }
  if (auto* x = s.opt("major")) {
    if (!resolve(*x, val, err) || !parse_number(val, n, err, UINT16_MAX)) return outcome::failure(err);
    v.major = uint16_t(n);
  }
  if (auto* x = s.opt("minor")) {
    if (!resolve(*x, val, err) || !parse_number(val, n, err, UINT16_MAX)) return outcome::failure(err);
    v.minor = uint16_t(n);
  }
  auto f = proto::make_frame(next_id_++, v);
  if (auto e = transmit(s, f); !e.empty()) return outcome::failure(e);
  io::received r;
  auto got = conn_->next([](const proto::header& h) { return h.is_reply(); }, io::after(step_timeout(s)), r);
  if (got == io::connection::got::timeout) return outcome::failure("no VERSION reply within " + format_duration(step_timeout(s)));
  if (got == io::connection::got::closed) return outcome::failure("no VERSION reply: " + conn_->why_closed());
  log_frame("<", r.f);
  if (!outstanding_.empty()) outstanding_.pop_front();
  auto h = r.f.hdr();
  if (h.is_error()) return outcome::failure("VERSION refused with " + errno_text(int(h.error_no)));
  auto m = decode_frame(r.f, quirks_);
  if (!m) return outcome::failure("VERSION reply does not decode: " + m.err().message());
  auto* rep = std::get_if<proto::version_reply>(&*m);
  if (!rep) return outcome::failure("expected a VERSION reply, got " + proto::message_name(*m));
  if (rep->major != v.major) return outcome::failure("server answered major " + std::to_string(rep->major));
  if (rep->minor > v.minor) return outcome::failure("server answered minor " + std::to_string(rep->minor) + " above ours");
  auto caps = proto::parse_capabilities(rep->caps_json.value_or(""));
  if (!caps) return outcome::failure("server capabilities: " + caps.err().message());
  return outcome::pass("0." + std::to_string(rep->minor) + " " + shorten(rep->caps_json.value_or("(no caps)"), 120));
}

outcome runner::send_request(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  arg_list fields;
  std::string err;
  proto::message m;
  if (!resolved_args(s.fields, fields, err) || !build_message({*s.command, false}, fields, m, err))
    return outcome::failure(err);
  auto f = proto::make_frame(next_id_++, m, s.has_word("no_reply") ? proto::hflags::no_reply : 0);
  if (!shape_frame(s, f, err)) return outcome::failure(err);
  if (auto e = transmit(s, f); !e.empty()) return outcome::failure(e);
  return outcome::pass();
}

outcome runner::send_raw(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  std::string v, err;
  proto::frame f;
  if (!resolve(*s.opt("hex"), v, err) || !parse_bytes(v, f.bytes, err)) return outcome::failure(err);
  if (auto e = transmit(s, f); !e.empty()) return outcome::failure(e);
  return outcome::pass(std::to_string(f.bytes.size()) + " bytes");
}

// Waits for the next frame that is a reply (or a command) and logs it; a failure outcome
// when none comes within the step's timeout or the connection closes first.
std::optional<outcome> runner::receive_one(const step& s, bool reply, io::received& r) {
  outcome o;
  if (!need_conn(o)) return o;
  auto to = step_timeout(s);
  auto got = conn_->next([reply](const proto::header& h) { return reply ? h.is_reply() : h.is_command(); },
                         io::after(to), r);
  const char* what = reply ? "reply" : "request";
  if (got == io::connection::got::timeout)
    return outcome::failure(std::string("no ") + what + " within " + format_duration(to));
  if (got == io::connection::got::closed) return outcome::failure(std::string("no ") + what + ": " + conn_->why_closed());
  log_frame("<", r.f);
  return std::nullopt;
}

outcome runner::expect_reply(const step& s) {
  io::received r;
  if (auto failed = receive_one(s, true, r)) return *failed;
  auto h = r.f.hdr();
  std::vector<std::string> problems;
  // Which request does it answer? Replies come in request order unless hdr.msg_id says otherwise.
  bool explicit_id = false;
  for (auto& [k, v] : s.hdr) explicit_id = explicit_id || k == "msg_id";
  std::optional<pending> answered;
  for (auto it = outstanding_.begin(); it != outstanding_.end(); ++it)
    if (it->id == h.msg_id) {
      if (it != outstanding_.begin() && !explicit_id)
        problems.push_back("reply id " + std::to_string(h.msg_id) + " overtook the request with id " +
                           std::to_string(outstanding_.front().id));
      answered = *it;
      outstanding_.erase(it);
      break;
    }
  if (!answered && !explicit_id) problems.push_back("reply id " + std::to_string(h.msg_id) + " answers no request we sent");
  if (s.command && h.command != *s.command)
    problems.push_back("command: expected " + std::string(proto::command_name(*s.command)) + ", got " + proto::command_name(h.command));
  auto m = decode_frame(r.f, quirks_);
  if (!m) problems.push_back("the reply does not decode: " + m.err().message());
  std::string v, err;
  if (auto* e = s.opt("errno")) {
    int want = 0;
    if (!resolve(*e, v, err) || !parse_errno(v, want, err)) problems.push_back(err);
    else if (!h.is_error()) problems.push_back("expected error " + errno_text(want) + ", got a successful reply");
    else if (int(h.error_no) != want)
      problems.push_back("errno: expected " + errno_text(want) + ", got " + errno_text(int(h.error_no)));
  } else if (h.is_error()) {
    problems.push_back("error reply " + errno_text(int(h.error_no)));
  }
  if (m && !h.is_error() && s.command && h.command == *s.command) check_fields({*s.command, true}, *m, s.fields, problems);
  if (auto* n = s.opt("fds")) {
    uint64_t want = 0;
    if (!resolve(*n, v, err) || !parse_number(v, want, err)) problems.push_back(err);
    else if (r.f.fds.size() != want)
      problems.push_back("fds: expected " + std::to_string(want) + ", got " + std::to_string(r.f.fds.size()));
  }
  check_hdr(s, h, r.f.fds.size(), problems);
  save_vars(s, h, r.f.fds.size(), m ? &*m : nullptr, problems);
  std::string info = brief(h);
  if (answered) {
    auto rtt = std::chrono::duration_cast<std::chrono::nanoseconds>(r.at - answered->sent);
    if (auto* l = s.opt("latency")) latency_[*l].push_back(rtt);
    info += " after " + format_duration(rtt);
  }
  if (!problems.empty()) return outcome::failure(join(problems) + " (" + info + ")");
  return outcome::pass(repeat_depth_ ? "" : info);
}

outcome runner::expect_request(const step& s) {
  io::received r;
  if (auto failed = receive_one(s, false, r)) return *failed;
  auto h = r.f.hdr();
  last_request_ = h;
  std::vector<std::string> problems;
  if (h.command != *s.command)
    problems.push_back("command: expected " + std::string(proto::command_name(*s.command)) + ", got " + proto::command_name(h.command));
  auto m = decode_frame(r.f, quirks_);
  if (!m) problems.push_back("the request does not decode: " + m.err().message());
  else if (h.command == *s.command) check_fields({*s.command, false}, *m, s.fields, problems);
  std::string v, err;
  if (auto* n = s.opt("fds")) {
    uint64_t want = 0;
    if (!resolve(*n, v, err) || !parse_number(v, want, err)) problems.push_back(err);
    else if (r.f.fds.size() != want)
      problems.push_back("fds: expected " + std::to_string(want) + ", got " + std::to_string(r.f.fds.size()));
  }
  check_hdr(s, h, r.f.fds.size(), problems);
  save_vars(s, h, r.f.fds.size(), m ? &*m : nullptr, problems);
  if (!problems.empty()) return outcome::failure(join(problems) + " (" + brief(h) + ")");
  return outcome::pass(repeat_depth_ ? "" : brief(h));
}

outcome runner::send_reply(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  if (!last_request_) return outcome::failure("no request to answer (expect-request first)");
  uint16_t cmd = s.command ? *s.command : last_request_->command;
  std::string v, err;
  proto::message m;
  if (auto* e = s.opt("errno")) {
    int en = 0;
    if (!resolve(*e, v, err) || !parse_errno(v, en, err)) return outcome::failure(err);
    m = proto::error_reply{cmd, uint32_t(en), {}};
  } else {
    arg_list fields;
    if (!resolved_args(s.fields, fields, err) || !build_message({cmd, true}, fields, m, err)) return outcome::failure(err);
  }
  auto f = proto::make_frame(last_request_->msg_id, m);
  if (!shape_frame(s, f, err)) return outcome::failure(err);
  if (auto e = transmit(s, f); !e.empty()) return outcome::failure(e);
  return outcome::pass();
}

outcome runner::expect_close(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  std::vector<io::received> unread;
  auto to = step_timeout(s);
  auto got = conn_->wait_close(io::after(to), unread);
  for (auto& r : unread) log_frame("<", r.f);
  std::vector<std::string> extra;
  for (auto& r : unread) extra.push_back(r.f.bytes.size() >= 16 ? brief(r.f.hdr()) : "a partial frame");
  if (got == io::connection::got::timeout) {
    std::string m = "the connection is still open after " + format_duration(to);
    if (!extra.empty()) m += "; the peer sent: " + join(extra);
    return outcome::failure(m);
  }
  if (!extra.empty()) return outcome::failure("closed, but first the peer sent: " + join(extra));
  outstanding_.clear();
  return outcome::pass(conn_->why_closed());
}

outcome runner::expect_silence(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  std::chrono::microseconds d = std::chrono::milliseconds(200);
  std::string v, err;
  if (auto* f = s.opt("for"); f && (!resolve(*f, v, err) || !parse_duration(v, d, err))) return outcome::failure(err);
  io::received r;
  auto got = conn_->any(io::after(d), r);
  if (got == io::connection::got::frame) {
    log_frame("<", r.f);
    return outcome::failure("the peer sent " + brief(r.f.hdr()));
  }
  if (got == io::connection::got::closed) return outcome::failure(conn_->why_closed());
  return outcome::pass();
}

}  // namespace vfu::harness
