#include "tools/harness/scenario.hpp"

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

namespace vfu::harness {

namespace {

// ---- step table -----------------------------------------------------------------------------
enum class vt : uint8_t { duration, number, text, bytes, errnum, boolean, fds, regex, list, exit_code, pieces, quirks, name };

struct opt_spec {
  const char* key;
  vt type;
};

enum class msg_use : uint8_t {
  none,
  request,        ///< the step sends a request of its own command
  check_reply,    ///< expect-reply [CMD]: fields are checked against a reply
  check_request,  ///< expect-request CMD: fields are checked against a request
  build_reply,    ///< reply [CMD]: fields build a reply
};

struct step_spec {
  const char* name;
  step_type type;
  int min_words, max_words;
  std::vector<opt_spec> opts;
  std::vector<const char*> required;
  msg_use msg = msg_use::none;
};

const std::vector<opt_spec> send_opts = {
    {"fds", vt::fds},       {"split", vt::pieces},   {"gap", vt::duration},  {"cut", vt::number},
    {"truncate", vt::number}, {"trailing", vt::bytes}, {"payload", vt::bytes}, {"timeout", vt::duration},
    {"may_close", vt::boolean}};
const std::vector<opt_spec> check_opts = {
    {"errno", vt::errnum}, {"fds", vt::number}, {"timeout", vt::duration}, {"latency", vt::name}};

std::vector<opt_spec> join(std::vector<opt_spec> a, const std::vector<opt_spec>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::vector<step_spec>& step_specs() {
  static const std::vector<step_spec> specs = {
      {"start-server", step_type::start_server, 0, 0, {{"device", vt::text}, {"args", vt::text}, {"timeout", vt::duration}}, {"device"}},
      {"stop-server", step_type::stop_server, 0, 0, {{"timeout", vt::duration}}, {}},
      {"connect", step_type::connect, 0, 0, {{"path", vt::text}, {"timeout", vt::duration}}, {}},
      {"disconnect", step_type::disconnect, 0, 0, {}, {}},
      {"listen", step_type::listen, 0, 0, {}, {}},
      {"spawn-client", step_type::spawn_client, 0, 0, {{"program", vt::text}, {"args", vt::text}}, {}},
      {"accept", step_type::accept, 0, 0, {{"timeout", vt::duration}}, {}},
      {"expect-exit", step_type::expect_exit, 0, 0,
       {{"code", vt::exit_code}, {"stderr", vt::regex}, {"stdout", vt::regex}, {"stderr_lines", vt::number}, {"timeout", vt::duration}}, {}},
      {"memfd", step_type::memfd, 1, 1, {{"size", vt::number}, {"data", vt::bytes}}, {"size"}},
      {"eventfd", step_type::eventfd, 1, 1, {}, {}},
      {"file", step_type::file, 1, 1, {{"path", vt::text}, {"write", vt::boolean}}, {"path"}},
      {"mem-write", step_type::mem_write, 1, 1, {{"offset", vt::number}, {"data", vt::bytes}}, {"data"}},
      {"mem-expect", step_type::mem_expect, 1, 1, {{"offset", vt::number}, {"data", vt::bytes}}, {"data"}},
      {"wait-eventfd", step_type::wait_eventfd, 1, 1, {{"timeout", vt::duration}, {"count", vt::number}}, {}},
      {"eventfd-quiet", step_type::eventfd_quiet, 1, 1, {{"for", vt::duration}}, {}},
      {"negotiate", step_type::negotiate, 0, 0,
       {{"caps_json", vt::text}, {"major", vt::number}, {"minor", vt::number}, {"timeout", vt::duration}}, {}},
      {"raw", step_type::raw, 0, 0,
       {{"hex", vt::bytes}, {"fds", vt::fds}, {"split", vt::pieces}, {"gap", vt::duration}, {"cut", vt::number}, {"timeout", vt::duration}},
       {"hex"}},
      {"expect-reply", step_type::expect_reply, 0, 1, check_opts, {}, msg_use::check_reply},
      {"expect-request", step_type::expect_request, 1, 1, {{"fds", vt::number}, {"timeout", vt::duration}}, {}, msg_use::check_request},
      {"reply", step_type::reply, 0, 1, join(send_opts, {{"errno", vt::errnum}}), {}, msg_use::build_reply},
      {"expect-close", step_type::expect_close, 0, 0, {{"timeout", vt::duration}}, {}},
      {"expect-silence", step_type::expect_silence, 0, 0, {{"for", vt::duration}}, {}},
      {"pause", step_type::pause, 0, 1, {{"for", vt::duration}}, {}},
      {"repeat", step_type::repeat, 1, 1, {}, {}},
      {"latency", step_type::latency, 1, 1, {{"max_p50", vt::duration}, {"max_p99", vt::duration}, {"max", vt::duration}}, {}},
      {"replay", step_type::replay, 0, 0,
       {{"file", vt::text}, {"session", vt::text}, {"ignore", vt::list}, {"quirks", vt::quirks}, {"timeout", vt::duration}}, {"file"}},
      {"set", step_type::set, 0, 0, {{"timeout", vt::duration}, {"quirks", vt::quirks}}, {}},
  };
  return specs;
}

const step_spec* find_spec(const std::string& name) {
  for (auto& s : step_specs())
    if (name == s.name) return &s;
  return nullptr;
}

// ---- tokens -------------------------------------------------------------------------------
struct token {
  std::string key;    ///< positional: the word; option: the key
  std::string value;
  bool has_value = false;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

bool read_quoted(const std::string& s, size_t& i, std::string& out, std::string& err) {
  char q = s[i++];
  while (i < s.size() && s[i] != q) {
    if (q == '"' && s[i] == '\\' && i + 1 < s.size()) ++i;
    out.push_back(s[i++]);
  }
  if (i >= s.size()) {
    err = std::string("unterminated ") + (q == '"' ? "double" : "single") + " quote";
    return false;
  }
  ++i;  // closing quote
  if (i < s.size() && !is_space(s[i])) {
    err = "quoted value must be followed by a space";
    return false;
  }
  return true;
}

bool tokenize(const std::string& line, std::vector<token>& out, std::string& err) {
  size_t i = 0;
  while (true) {
    while (i < line.size() && is_space(line[i])) ++i;
    if (i >= line.size() || line[i] == '#') return true;
    token t;
    if (line[i] == '\'' || line[i] == '"') {
      if (!read_quoted(line, i, t.key, err)) return false;
      out.push_back(std::move(t));
      continue;
    }
    while (i < line.size() && !is_space(line[i]) && line[i] != '=') t.key.push_back(line[i++]);
    if (i < line.size() && line[i] == '=') {
      ++i;
      t.has_value = true;
      if (t.key.empty()) {
        err = "'=' without a name before it";
        return false;
      }
      if (i < line.size() && (line[i] == '\'' || line[i] == '"')) {
        if (!read_quoted(line, i, t.value, err)) return false;
      } else {
        while (i < line.size() && !is_space(line[i])) t.value.push_back(line[i++]);
      }
    }
    out.push_back(std::move(t));
  }
}

// ---- checking one step --------------------------------------------------------------------
struct checker {
  std::vector<parse_error>* errors;
  std::set<std::string> fd_names;
  std::set<std::string> vars;

  void error(const step& s, const std::string& msg) { errors->push_back({s.file, s.line, msg}); }

  bool is_var(const std::string& v) const { return v.size() > 1 && v[0] == '$'; }
  /// A `$var` value: it must have been saved earlier; its syntax is checked when it runs.
  bool var_ok(const step& s, const std::string& key, const std::string& v) {
    if (!is_var(v)) return false;
    if (!vars.count(v.substr(1))) error(s, key + ": variable " + v + " is not saved by an earlier step (save." + v.substr(1) + "=FIELD)");
    return true;
  }

  void check_value(const step& s, const std::string& key, const std::string& v, vt type) {
    if (var_ok(s, key, v)) return;
    std::string err;
    bool ok = true;
    switch (type) {
      case vt::duration: {
        std::chrono::microseconds d;
        ok = parse_duration(v, d, err);
        break;
      }
      case vt::number: {
        uint64_t n;
        ok = parse_number(v, n, err);
        break;
      }
      case vt::text: break;
      case vt::bytes: {
        std::vector<uint8_t> b;
        ok = parse_bytes(v, b, err);
        break;
      }
      case vt::errnum: {
        int e;
        ok = parse_errno(v, e, err);
        break;
      }
      case vt::boolean: {
        bool b;
        ok = parse_bool(v, b, err);
        break;
      }
      case vt::fds: {
        std::vector<std::pair<std::string, uint32_t>> l;
        ok = parse_fd_list(v, l, err);
        for (auto& [n, c] : l)
          if (ok && !fd_names.count(n)) {
            ok = false;
            err = "no fd named '" + n + "' (create it first with memfd, eventfd or file)";
          }
        break;
      }
      case vt::regex: {
        try {
          std::regex r(v);
        } catch (const std::regex_error& e) {
          ok = false;
          err = std::string("bad regular expression: ") + e.what();
        }
        break;
      }
      case vt::list: ok = !split_list(v).empty(); err = "empty list"; break;
      case vt::exit_code: {
        uint64_t n;
        if (v != "nonzero" && v != "signal") {
          ok = parse_number(v, n, err, 255);
          if (!ok) err = "code must be a number 0..255, nonzero or signal";
        }
        break;
      }
      case vt::pieces: {
        std::vector<size_t> p;
        ok = parse_pieces(v, p, err);
        break;
      }
      case vt::quirks:
        ok = v == "spec" || v == "qemu" || v == "libvfio-user" || v == "qemu|libvfio-user";
        err = "quirks must be spec, qemu, libvfio-user or qemu|libvfio-user";
        break;
      case vt::name:
        ok = !v.empty();
        err = "empty name";
        break;
    }
    if (!ok) error(s, key + ": " + err);
  }

  void check_field(const step& s, msg_kind k, const std::string& key, const std::string& v) {
    const field_info* f = find_field(k, key);
    if (!f) {
      std::string known;
      for (auto& x : schema(k)) known += (known.empty() ? "" : " ") + x.name;
      error(s, "unknown field '" + key + "' for " + command_key(k.command) + (k.reply ? " reply" : " request") +
                   (known.empty() ? " (it has no fields)" : " (fields: " + known + ")"));
      return;
    }
    if (var_ok(s, key, v)) return;
    field_value fv;
    std::string err;
    if (!parse_field_value(*f, v, fv, err)) error(s, key + ": " + err);
  }

  void check_step(step& s, const step_spec& sp) {
    // Positional words.
    int nw = int(s.words.size());
    bool typed_send = sp.type == step_type::send;
    if (typed_send) {
      for (auto& w : s.words)
        if (w != "no_reply") error(s, "unexpected word '" + w + "' (did you mean " + w + "=VALUE?)");
    } else if (nw < sp.min_words || nw > sp.max_words) {
      if (sp.max_words == 0) error(s, sp.name + std::string(" takes no positional words, got '") + s.words[0] + "'");
      else error(s, std::string(sp.name) + " needs " + (sp.min_words == sp.max_words ? "" : "at most ") +
                        std::to_string(sp.max_words) + " positional word" + (sp.max_words > 1 ? "s" : "") +
                        (nw < sp.min_words ? ", got none" : ", got " + std::to_string(nw)));
    }
    // Per-step positional meaning.
    if (nw >= 1) {
      const std::string& w0 = s.words[0];
      switch (sp.type) {
        case step_type::expect_reply:
        case step_type::expect_request:
        case step_type::reply:
          if (auto c = command_by_name(w0)) s.command = *c;
          else error(s, "unknown command '" + w0 + "'");
          break;
        case step_type::pause: check_value(s, "pause", w0, vt::duration); break;
        case step_type::repeat: {
          uint64_t n;
          std::string err;
          if (!parse_number(w0, n, err, 10000000)) error(s, "repeat count: " + err);
          break;
        }
        case step_type::memfd:
        case step_type::eventfd:
        case step_type::file: fd_names.insert(w0); break;
        case step_type::mem_write:
        case step_type::mem_expect:
          if (!fd_names.count(w0)) error(s, "no memfd named '" + w0 + "'");
          break;
        case step_type::wait_eventfd:
        case step_type::eventfd_quiet:
          if (!fd_names.count(w0)) error(s, "no eventfd named '" + w0 + "'");
          break;
        default: break;
      }
    }
    if (sp.type == step_type::pause && s.words.empty() && !s.opt("for")) error(s, "pause needs a duration (pause 100ms)");
    // Options, fields, header fields, saves.
    std::optional<msg_kind> kind;
    if (s.command) {
      bool reply = sp.msg == msg_use::check_reply || sp.msg == msg_use::build_reply;
      kind = msg_kind{*s.command, reply};
    }
    arg_list all;
    all.swap(s.opts);
    std::set<std::string> seen;
    for (auto& [key, value] : all) {
      if (!seen.insert(key).second && key.rfind("save.", 0) != 0) error(s, "'" + key + "' given twice");
      if (key.rfind("hdr.", 0) == 0) {
        if (sp.msg == msg_use::none && sp.type != step_type::send) {
          error(s, std::string(sp.name) + " has no header fields");
          continue;
        }
        if (!var_ok(s, key, value)) {
          uint64_t v;
          std::string err;
          if (!parse_hdr_value(key.substr(4), value, v, err)) error(s, key + ": " + err);
        }
        s.hdr.emplace_back(key.substr(4), value);
        continue;
      }
      if (key.rfind("save.", 0) == 0) {
        if (sp.msg != msg_use::check_reply && sp.msg != msg_use::check_request) {
          error(s, "save.VAR is only for expect-reply and expect-request");
          continue;
        }
        std::string var = key.substr(5);
        if (var.empty()) error(s, "save. needs a variable name (save.VAR=FIELD)");
        bool meta = value == "errno" || value == "fds" || value.rfind("hdr.", 0) == 0;
        if (!meta && (!kind || !find_field(*kind, value))) error(s, "save." + var + ": no field '" + value + "' to save");
        vars.insert(var);
        s.saves.emplace_back(var, value);
        continue;
      }
      const opt_spec* os = nullptr;
      for (auto& o : sp.opts)
        if (key == o.key) os = &o;
      if (os) {
        check_value(s, key, value, os->type);
        s.opts.emplace_back(key, value);
        continue;
      }
      if (sp.msg != msg_use::none && sp.type != step_type::negotiate) {
        if (!kind) {
          error(s, "field '" + key + "' needs a command (e.g. " + sp.name + " region_read " + key + "=...)");
          continue;
        }
        check_field(s, *kind, key, value);
        s.fields.emplace_back(key, value);
        continue;
      }
      std::string known;
      for (auto& o : sp.opts) known += std::string(known.empty() ? "" : ", ") + o.key;
      error(s, "unknown option '" + key + "' for " + sp.name + (known.empty() ? "" : " (options: " + known + ")"));
    }
    for (auto* r : sp.required)
      if (!s.opt(r)) error(s, std::string(sp.name) + " needs " + r + "=...");
    if (s.opt("payload") && (s.opt("truncate") || s.opt("trailing")))
      error(s, "payload= replaces the whole payload: do not combine it with truncate= or trailing=");
  }
};

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && (is_space(s[b - 1]) || s[b - 1] == '\n')) --b;
  return s.substr(a, b - a);
}

}  // namespace

const std::string* step::opt(const std::string& key) const {
  for (auto& [k, v] : opts)
    if (k == key) return &v;
  return nullptr;
}

bool step::has_word(const std::string& w) const {
  for (auto& x : words)
    if (x == w) return true;
  return false;
}

bool parse_hdr_value(const std::string& key, const std::string& value, uint64_t& out, std::string& err) {
  if (key == "msg_id") return parse_number(value, out, err, UINT16_MAX);
  if (key == "msg_size") return parse_number(value, out, err, UINT32_MAX);
  if (key == "command") {
    if (auto c = command_by_name(value)) {
      out = *c;
      return true;
    }
    if (value.empty() || value[0] < '0' || value[0] > '9') {
      err = "unknown command '" + value + "'";
      return false;
    }
    return parse_number(value, out, err, UINT16_MAX);
  }
  if (key == "flags") {
    if (!parse_flags(value, header_flag_names(), out, err)) return false;
    if (out > UINT32_MAX) {
      err = "flags do not fit in 32 bits";
      return false;
    }
    return true;
  }
  if (key == "error_no") {
    int e;
    if (!value.empty() && value[0] == 'E' && parse_errno(value, e, err)) {
      out = uint64_t(e);
      return true;
    }
    return parse_number(value, out, err, UINT32_MAX);
  }
  err = "unknown header field 'hdr." + key + "' (msg_id, command, msg_size, flags, error_no)";
  return false;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, ','))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

bool parse_fd_list(const std::string& s, std::vector<std::pair<std::string, uint32_t>>& out, std::string& err) {
  out.clear();
  auto items = split_list(s);
  if (items.empty()) {
    err = "empty fd list";
    return false;
  }
  size_t total = 0;
  for (auto& it : items) {
    uint64_t n = 1;
    std::string name = it;
    if (auto star = it.find('*'); star != std::string::npos) {
      name = it.substr(0, star);
      if (!parse_number(it.substr(star + 1), n, err, 1024)) return false;
    }
    if (name.empty()) {
      err = "empty fd name in '" + s + "'";
      return false;
    }
    total += n;
    out.emplace_back(name, uint32_t(n));
  }
  if (total > 1024) {
    err = "more than 1024 fds";
    return false;
  }
  return true;
}

bool parse_pieces(const std::string& s, std::vector<size_t>& out, std::string& err) {
  out.clear();
  for (auto& it : split_list(s)) {
    uint64_t n;
    if (!parse_number(it, n, err, 1u << 30)) return false;
    if (n == 0) {
      err = "a piece must be at least 1 byte";
      return false;
    }
    out.push_back(size_t(n));
  }
  if (out.empty()) {
    err = "empty list of piece sizes";
    return false;
  }
  return true;
}

std::vector<parse_error> parse_scenario(const std::string& text, const std::string& file, scenario& out) {
  std::vector<parse_error> errors;
  out.path = file;
  auto slash = file.rfind('/');
  out.dir = slash == std::string::npos ? "." : file.substr(0, slash);
  out.steps.clear();
  checker chk{&errors, {}, {}};
  // Stack of open blocks: the step list being filled and the `repeat` that opened it.
  std::vector<std::vector<step>*> stack{&out.steps};
  std::vector<int> open_lines;

  std::istringstream in(text);
  std::string phys;
  int lineno = 0;
  while (std::getline(in, phys)) {
    ++lineno;
    int first = lineno;
    std::string line = phys;
    // A trailing backslash continues the line.
    while (!trim(line).empty() && trim(line).back() == '\\') {
      line = trim(line);
      line.pop_back();
      std::string next;
      if (!std::getline(in, next)) break;
      ++lineno;
      line += " " + next;
    }
    std::vector<token> toks;
    std::string err;
    if (!tokenize(line, toks, err)) {
      errors.push_back({file, first, err});
      continue;
    }
    if (toks.empty()) continue;
    step s;
    s.file = file;
    s.line = first;
    s.text = trim(line);
    if (toks[0].has_value) {
      errors.push_back({file, first, "a line must start with a step name, not '" + toks[0].key + "=...'"});
      continue;
    }
    s.name = toks[0].key;
    if (s.name == "end") {
      if (toks.size() > 1) errors.push_back({file, first, "end takes nothing after it"});
      if (stack.size() == 1) errors.push_back({file, first, "end without repeat"});
      else {
        stack.pop_back();
        open_lines.pop_back();
      }
      continue;
    }
    const step_spec* sp = find_spec(s.name);
    step_spec send_spec{"", step_type::send, 0, 1, send_opts, {}, msg_use::request};
    if (!sp) {
      if (auto c = command_by_name(s.name)) {
        s.command = *c;
        send_spec.name = s.name.c_str();
        sp = &send_spec;
      } else {
        std::string msg = "unknown step '" + s.name + "'";
        if (s.name == "send") msg += " (send a request by naming its command: region_read region=7 ...)";
        errors.push_back({file, first, msg});
        continue;
      }
    }
    s.type = sp->type;
    for (size_t i = 1; i < toks.size(); ++i) {
      if (toks[i].has_value) s.opts.emplace_back(toks[i].key, toks[i].value);
      else s.words.push_back(toks[i].key);
    }
    chk.check_step(s, *sp);
    if (s.type == step_type::repeat) {
      stack.back()->push_back(std::move(s));
      stack.push_back(&stack.back()->back().body);
      open_lines.push_back(first);
      continue;
    }
    stack.back()->push_back(std::move(s));
  }
  for (int l : open_lines) errors.push_back({file, l, "repeat without end"});
  return errors;
}

std::vector<parse_error> load_scenario(const std::string& path, scenario& out) {
  std::ifstream in(path);
  if (!in) return {{path, 0, "cannot open the scenario file"}};
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_scenario(ss.str(), path, out);
}

}  // namespace vfu::harness
