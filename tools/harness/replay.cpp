#include "tools/harness/replay.hpp"

#include "protocol/capabilities.hpp"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <set>

#include "tools/harness/fields.hpp"
#include "tools/harness/runner_state.hpp"

namespace vfu::harness {

using namespace proto;

namespace {

field_value num_value(uint64_t v) {
  field_value f;
  f.num = v;
  return f;
}

field_value text_value(std::string t) {
  field_value f;
  f.kind = field_kind::text;
  f.text = std::move(t);
  return f;
}

/// What is compared of a reply: header essentials, fd count, decoded fields.
template <class Bytes>
field_list reply_fields(const Bytes& bytes, size_t nfds, const quirks& q) {
  field_list out;
  header h = read_header(bytes.data());
  out.emplace_back("hdr.command", text_value(std::string(command_name(h.command)) + " (" + std::to_string(h.command) + ")"));
  out.emplace_back("hdr.msg_id", num_value(h.msg_id));
  field_value fl;
  fl.kind = field_kind::flags;
  fl.num = h.flags;
  fl.flags = &header_flag_names();
  out.emplace_back("hdr.flags", fl);
  out.emplace_back("fds", num_value(nfds));
  auto m = decode(h, byte_view{bytes.data() + header_size, bytes.size() - header_size}, nfds, q);
  if (!m) {
    out.emplace_back("decode", text_value("does not decode: " + m.err().message()));
    return out;
  }
  for (auto& f : flatten(*m)) out.push_back(std::move(f));
  return out;
}

std::string brief(const header& h) {
  char id[16];
  std::snprintf(id, sizeof id, "0x%04x", h.msg_id);
  return std::string(command_name(h.command)) + (h.is_reply() ? " reply" : " request") + " id=" + id;
}

/// "{offset=4 region=7 count=2}": the request a difference answers, in a few fields.
std::string request_gist(const vec_record& r, const quirks& q) {
  header h = read_header(r.bytes.data());
  auto m = decode(h, byte_view{r.bytes.data() + header_size, r.bytes.size() - header_size}, r.nfds, q);
  if (!m) return "";
  std::string s;
  int n = 0;
  for (auto& [k, v] : flatten(*m)) {
    if (++n > 6) {
      s += " ...";
      break;
    }
    std::string val = v.kind == field_kind::bytes ? format_bytes(v.bytes, 16) : to_string(v);
    if (auto sp = val.find(" ("); sp != std::string::npos && v.kind != field_kind::bytes) val = val.substr(0, sp);
    s += (s.empty() ? "" : " ") + k + "=" + val;
  }
  return " {" + s + "}";
}

bool synth_fds(const vec_record& r, const quirks& q, fd_list& out, std::string& err) {
  if (r.nfds == 0) return true;
  header h = read_header(r.bytes.data());
  auto m = decode(h, byte_view{r.bytes.data() + header_size, r.bytes.size() - header_size}, r.nfds, q);
  for (size_t i = 0; i < r.nfds; ++i) {
    io::owned_fd f;
    bool ok;
    if (m && std::holds_alternative<set_irqs_request>(*m)) {
      ok = io::make_eventfd(f, err);
    } else if (auto* d = m ? std::get_if<dma_map_request>(&*m) : nullptr; d && i == 0) {
      ok = io::make_memfd(size_t(d->offset + d->size), f, err, false);
    } else {
      ok = io::make_memfd(4096, f, err, false);
    }
    if (!ok) return false;
    out.push_back(std::move(f.fd));
  }
  return true;
}

struct session_view {
  std::vector<const vec_record*> recs;
  size_t server_cursor = 0;  ///< next captured server->client request to consider
};

/// Answers a request from our server with the client's captured answer to the same kind of
/// request, or ENOSYS (and a difference) when the capture has none.
void answer_server_request(io::connection& c, session_view& sv, const frame& req, const replay_options& o,
                           replay_report& rep) {
  header rh = req.hdr();
  const vec_record* answer = nullptr;
  for (size_t k = sv.server_cursor; k < sv.recs.size() && !answer; ++k) {
    auto& x = *sv.recs[k];
    header xh = read_header(x.bytes.data());
    if (x.client_to_server || !xh.is_command() || xh.command != rh.command) continue;
    sv.server_cursor = k + 1;
    for (size_t j = k + 1; j < sv.recs.size(); ++j) {
      auto& y = *sv.recs[j];
      header yh = read_header(y.bytes.data());
      if (y.client_to_server && yh.is_reply() && yh.msg_id == xh.msg_id) {
        answer = &y;
        break;
      }
    }
  }
  frame f;
  if (answer) {
    f.bytes.assign(answer->bytes.begin(), answer->bytes.end());
    f.set_msg_id(rh.msg_id);
  } else {
    f = make_error_reply(rh, ENOSYS);
    rep.diffs.push_back("the server sent " + brief(rh) + ", which the capture has no answer for (answered ENOSYS)");
  }
  if (o.log) o.log(">", f);
  auto e = c.send(f.bytes, {}, {}, io::after(o.timeout));
  if (!e.empty()) rep.error = e;
}

// A replay speaks one socket: a captured VERSION request's twin_socket offer is withdrawn
// (the server then sends its requests on this socket, answered from the capture's
// "<session>/twin" records). Other requests are sent as captured.
void one_socket(frame& f) {
  auto m = decode(f);
  auto* v = m ? std::get_if<version_request>(&*m) : nullptr;
  if (!v || !v->caps_json) return;
  auto caps = parse_capabilities(*v->caps_json);
  if (!caps || !caps->twin_socket) return;
  caps->twin_socket = false;
  v->caps_json = to_json(*caps, true);
  f = make_frame(f.hdr().msg_id, *v, f.hdr().flags);
}

}  // namespace

bool key_matches(const std::string& pattern, const std::string& key) {
  // Iterative glob with '*' only.
  size_t p = 0, k = 0, star = std::string::npos, mark = 0;
  while (k < key.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = k;
    } else if (p < pattern.size() && pattern[p] == key[k]) {
      ++p;
      ++k;
    } else if (star != std::string::npos) {
      p = star + 1;
      k = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

replay_report replay_capture(io::connection& c, const vec_file& vf, const replay_options& o) {
  replay_report rep;
  quirks q = vf.peer_quirks() | o.quirks;
  session_view sv;
  for (auto& r : vf.records)
    if (r.session == o.session || r.session == o.session + "/twin") sv.recs.push_back(&r);
  auto ignored = [&](const std::string& key) {
    for (auto& p : o.ignore)
      if (key_matches(p, key)) return true;
    return false;
  };
  for (size_t i = 0; i < sv.recs.size(); ++i) {
    const vec_record& r = *sv.recs[i];
    header h = read_header(r.bytes.data());
    if (!r.client_to_server || !h.is_command()) continue;
    ++rep.requests;
    frame f;
    f.bytes.assign(r.bytes.begin(), r.bytes.end());
    if (h.command == uint16_t(command::version)) one_socket(f);
    std::string err;
    if (!synth_fds(r, q, f.fds, err)) {
      rep.error = "line " + std::to_string(r.line) + ": " + err;
      return rep;
    }
    if (o.log) o.log(">", f);
    if (auto e = c.send(f.bytes, f.fds, {}, io::after(o.timeout)); !e.empty()) {
      rep.error = "line " + std::to_string(r.line) + ": " + e;
      return rep;
    }
    f.fds.clear();
    if (h.no_reply()) continue;
    const vec_record* cap = nullptr;
    for (size_t j = i + 1; j < sv.recs.size() && !cap; ++j) {
      header xh = read_header(sv.recs[j]->bytes.data());
      if (!sv.recs[j]->client_to_server && xh.is_reply() && xh.msg_id == h.msg_id) cap = sv.recs[j];
    }
    io::received got;
    bool have = false;
    while (true) {
      auto g = c.next([](const header&) { return true; }, io::after(o.timeout), got);
      if (g == io::connection::got::closed) {
        rep.error = "after the request on line " + std::to_string(r.line) + " (" + brief(h) + "): " + c.why_closed();
        return rep;
      }
      if (g == io::connection::got::timeout) break;
      if (o.log) o.log("<", got.f);
      if (got.f.hdr().is_command()) {
        answer_server_request(c, sv, got.f, o, rep);
        if (!rep.error.empty()) return rep;
        continue;
      }
      have = true;
      break;
    }
    std::string where = "line " + std::to_string(cap ? cap->line : r.line) + " " +
                        brief(cap ? read_header(cap->bytes.data()) : h) + " to line " + std::to_string(r.line) +
                        request_gist(r, q);
    if (!have) {
      if (cap) {
        rep.diffs.push_back(where + ": no reply from the server within the timeout");
        ++rep.differing;
      }
      continue;
    }
    if (!cap) {
      rep.diffs.push_back(where + ": the capture has no reply to this request; the server sent " + brief(got.f.hdr()));
      ++rep.differing;
      continue;
    }
    ++rep.compared;
    std::string cmd = command_key(h.command);
    header ch = read_header(cap->bytes.data()), oh = got.f.hdr();
    std::vector<std::pair<std::string, std::string>> found;  // key, text
    if (ch.is_error() != oh.is_error()) {
      auto side = [](const header& x) { return x.is_error() ? "error " + errno_text(int(x.error_no)) : std::string("success"); };
      found.emplace_back(cmd + ".errno", "captured " + side(ch) + ", ours " + side(oh));
    } else {
      field_list a = reply_fields(cap->bytes, cap->nfds, q), b = reply_fields(got.f.bytes, got.f.fds.size(), q);
      std::set<std::string> seen;
      for (auto& [name, av] : a) {
        seen.insert(name);
        const field_value* bv = nullptr;
        for (auto& [bn, x] : b)
          if (bn == name) bv = &x;
        if (!bv) found.emplace_back(cmd + "." + name, "captured " + to_string(av) + ", ours absent");
        else if (!same_value(name, av, *bv)) found.emplace_back(cmd + "." + name, "captured " + to_string(av) + ", ours " + to_string(*bv));
      }
      for (auto& [name, bv] : b)
        if (!seen.count(name)) found.emplace_back(cmd + "." + name, "captured absent, ours " + to_string(bv));
    }
    bool counted = false;
    for (auto& [key, text] : found) {
      std::string line = where + ": " + key + ": " + text;
      if (ignored(key)) rep.ignored.push_back(line);
      else {
        rep.diffs.push_back(line);
        counted = true;
      }
    }
    if (counted) ++rep.differing;
  }
  return rep;
}

// ---- the replay step ---------------------------------------------------------------------------
outcome runner::replay(const step& s) {
  outcome o;
  if (!need_conn(o)) return o;
  std::string file, v, err;
  if (!resolve(*s.opt("file"), file, err)) return outcome::failure(err);
  std::vector<std::string> candidates;
  if (!file.empty() && file[0] == '/') {
    candidates.push_back(file);
  } else {
    if (!o_.vectors_dir.empty()) candidates.push_back(o_.vectors_dir + "/" + file);
    if (const char* env = std::getenv("VFU_VECTORS_DIR"); env && *env && env != o_.vectors_dir)
      candidates.push_back(std::string(env) + "/" + file);
    candidates.push_back(where(file));
  }
  std::string path;
  for (auto& c : candidates) {
    struct stat st;
    if (::stat(c.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      path = c;
      break;
    }
  }
  if (path.empty()) {
    std::string looked;
    for (auto& c : candidates) looked += (looked.empty() ? "" : ", ") + c;
    return {outcome::skip, "capture not found (looked at " + looked + "); set VFU_VECTORS_DIR or --vectors=DIR", {}};
  }
  auto vf = read_vec_file(path);
  if (!vf) return outcome::failure(vf.err().message());
  std::set<std::string> sessions;
  for (auto& r : vf->records)  // (a twin socket's records go with their session)
    if (r.session.size() < 5 || r.session.compare(r.session.size() - 5, 5, "/twin") != 0) sessions.insert(r.session);
  std::string all;
  for (auto& x : sessions) all += (all.empty() ? "" : ", ") + x;
  replay_options ro;
  if (auto* x = s.opt("session")) {
    if (!resolve(*x, ro.session, err)) return outcome::failure(err);
    if (!sessions.count(ro.session)) return outcome::failure("no session '" + ro.session + "' in " + path + " (sessions: " + all + ")");
  } else if (sessions.size() == 1) {
    ro.session = *sessions.begin();
  } else {
    return outcome::failure("the capture has several sessions; choose one with session= (" + all + ")");
  }
  if (auto* x = s.opt("ignore")) {
    if (!resolve(*x, v, err)) return outcome::failure(err);
    ro.ignore = split_list(v);
  }
  if (auto* x = s.opt("quirks")) {
    if (*x == "qemu") ro.quirks = quirks::qemu();
    else if (*x == "libvfio-user") ro.quirks = quirks::libvfio_user();
    else if (*x != "spec") ro.quirks = quirks::qemu() | quirks::libvfio_user();
  }
  ro.timeout = step_timeout(s);
  if (o_.verbose) ro.log = [this](const char* dir, const frame& f) { log_frame(dir, f); };
  auto rep = replay_capture(*conn_, *vf, ro);
  outstanding_.clear();
  last_request_.reset();
  std::string summary = ro.session + ": " + std::to_string(rep.requests) + " requests, " + std::to_string(rep.compared) +
                        " replies compared, " + std::to_string(rep.differing) + " differ (" +
                        std::to_string(rep.diffs.size()) + " differences, " + std::to_string(rep.ignored.size()) + " ignored)";
  outcome res = rep.error.empty() && rep.diffs.empty() ? outcome::pass(summary) : outcome::failure(summary);
  if (!rep.error.empty()) res.msg += "; stopped early: " + rep.error;
  const size_t max_lines = 200;
  for (size_t i = 0; i < rep.diffs.size() && i < max_lines; ++i) res.details.push_back(rep.diffs[i]);
  if (rep.diffs.size() > max_lines) res.details.push_back("... and " + std::to_string(rep.diffs.size() - max_lines) + " more");
  if (o_.verbose)
    for (auto& x : rep.ignored) res.details.push_back("(ignored) " + x);
  return res;
}

}  // namespace vfu::harness
