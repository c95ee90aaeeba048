// The scenario language: parsing, the checks done before anything runs (each reported as
// file:line), value syntax, and the message field mapping behind typed steps.
#include <gtest/gtest.h>

#include <random>

#include "tools/harness/fields.hpp"
#include "tools/harness/replay.hpp"
#include "tools/harness/scenario.hpp"

namespace {

using namespace vfu::harness;
using namespace vfu::proto;

std::vector<parse_error> parse(const std::string& text, scenario* out = nullptr) {
  scenario s;
  auto errs = parse_scenario(text, "t.vfu", s);
  if (out) *out = std::move(s);
  return errs;
}

#define EXPECT_PREFIX(actual, prefix) EXPECT_EQ(std::string(actual).substr(0, std::string(prefix).size()), prefix) << (actual)

/// The single error of `text`, as "line: message".
std::string one_error(const std::string& text) {
  auto errs = parse(text);
  if (errs.size() != 1) {
    std::string all;
    for (auto& e : errs) all += e.text() + " | ";
    return "expected one error, got " + std::to_string(errs.size()) + ": " + all;
  }
  return std::to_string(errs[0].line) + ": " + errs[0].message;
}

TEST(HarnessParser, ParsesStepsOptionsFieldsAndBlocks) {
  scenario s;
  auto errs = parse(
      "# comment\n"
      "start-server device=gpio args='--quirks=qemu'\n"
      "\n"
      "connect\n"
      "negotiate caps_json='{\"capabilities\": {\"max_msg_fds\": 8}}'\n"
      "repeat 3\n"
      "  region_read region=7 offset=0x0 count=4 hdr.msg_id=9 split=1,15  # trailing comment\n"
      "  expect-reply region_read data=4f49c80d latency=rd save.v=data\n"
      "end\n"
      "set_irqs flags=data_eventfd|action_trigger index=2 start=0 count=1 no_reply\n",
      &s);
  ASSERT_TRUE(errs.empty()) << errs[0].text();
  ASSERT_EQ(s.steps.size(), 5u);
  EXPECT_EQ(s.steps[0].type, step_type::start_server);
  EXPECT_EQ(*s.steps[0].opt("args"), "--quirks=qemu");
  EXPECT_EQ(s.steps[2].line, 5);
  EXPECT_EQ(*s.steps[2].opt("caps_json"), "{\"capabilities\": {\"max_msg_fds\": 8}}");
  auto& rep = s.steps[3];
  EXPECT_EQ(rep.type, step_type::repeat);
  ASSERT_EQ(rep.body.size(), 2u);
  auto& rd = rep.body[0];
  EXPECT_EQ(rd.type, step_type::send);
  EXPECT_EQ(*rd.command, uint16_t(command::region_read));
  EXPECT_EQ(rd.fields.size(), 3u);
  ASSERT_EQ(rd.hdr.size(), 1u);
  EXPECT_EQ(rd.hdr[0].first, "msg_id");
  EXPECT_EQ(*rd.opt("split"), "1,15");
  auto& ex = rep.body[1];
  EXPECT_EQ(ex.type, step_type::expect_reply);
  ASSERT_EQ(ex.saves.size(), 1u);
  EXPECT_EQ(ex.saves[0].first, "v");
  EXPECT_TRUE(s.steps[4].has_word("no_reply"));
  EXPECT_EQ(*s.steps[4].command, uint16_t(command::device_set_irqs));
}

TEST(HarnessParser, LongNamesAndContinuationLines) {
  scenario s;
  auto errs = parse("device_get_region_info \\\n   index=2 \\\n   argsz=80\nconnect\n", &s);
  ASSERT_TRUE(errs.empty()) << errs[0].text();
  ASSERT_EQ(s.steps.size(), 2u);
  EXPECT_EQ(s.steps[0].line, 1);
  EXPECT_EQ(s.steps[0].fields.size(), 2u);
  EXPECT_EQ(s.steps[1].line, 4);
}

TEST(HarnessParser, SyntaxErrorsCarryTheirLine) {
  EXPECT_EQ(one_error("connect\nnegotiate caps_json='{\n"), "2: unterminated single quote");
  EXPECT_EQ(one_error("connect\n\nfrobnicate x=1\n"), "3: unknown step 'frobnicate'");
  EXPECT_PREFIX(one_error("region_read region=7 count=4 x=1\n"), "1: unknown field 'x' for region_read requ");
  EXPECT_PREFIX(one_error("connect timeout=1s port=5\n"), "1: unknown option 'port' for conn");
  EXPECT_EQ(one_error("pause\n"), "1: pause needs a duration (pause 100ms)");
  EXPECT_EQ(one_error("repeat 2\nconnect\n"), "1: repeat without end");
  EXPECT_EQ(one_error("connect\nend\n"), "2: end without repeat");
  EXPECT_EQ(one_error("start-server\n"), "1: start-server needs device=...");
  EXPECT_EQ(one_error("=5\n"), "1: '=' without a name before it");
  EXPECT_EQ(one_error("connect 'x'y\n"), "1: quoted value must be followed by a space");
  EXPECT_EQ(one_error("get_info no_reply nope\n"), "1: unexpected word 'nope' (did you mean nope=VALUE?)");
  EXPECT_EQ(one_error("expect-reply bogus_cmd\n"), "1: unknown command 'bogus_cmd'");
  EXPECT_PREFIX(one_error("expect-reply num_regions=9\n"), "1: field 'num_regions' needs a comma");
  EXPECT_EQ(one_error("get_info timeout=1s timeout=2s\n"), "1: 'timeout' given twice");
}

TEST(HarnessParser, ValueErrorsAreFoundBeforeRunning) {
  EXPECT_PREFIX(one_error("dma_map flags=read|exec addr=0 size=1\n"), "1: flags: unknown flag 'exec' (");
  EXPECT_EQ(one_error("region_read region=0x100000000\n"), "1: region: number 0x100000000 is larger than 4294967295");
  EXPECT_PREFIX(one_error("region_write region=2 data=abc\n"), "1: data: bad hex bytes");
  EXPECT_PREFIX(one_error("expect-reply get_info errno=EWHAT\n"), "1: errno: unknown errno 'EWHAT");
  EXPECT_EQ(one_error("set timeout=5 minutes\n"), "1: set takes no positional words, got 'minutes'");
  EXPECT_EQ(one_error("set timeout=5m\n"), "1: timeout: bad duration unit 'm' (us, ms or s)");
  EXPECT_PREFIX(one_error("get_info hdr.bogus=1\n"), "1: hdr.bogus: unknown header field 'hd");
  EXPECT_EQ(one_error("get_info hdr.command=frob\n"), "1: hdr.command: unknown command 'frob'");
  EXPECT_PREFIX(one_error("get_info fds=nothere\n"), "1: fds: no fd named 'nothere'");
  EXPECT_EQ(one_error("eventfd e\nget_info fds=e*2000\n"), "2: fds: number 2000 is larger than 1024");
  EXPECT_PREFIX(one_error("region_read region=$v\n"), "1: region: variable $v is not saved by ");
  EXPECT_PREFIX(one_error("listen\nexpect-exit stderr='(unclosed'\n"), "2: stderr: bad regular expression: ");
  EXPECT_PREFIX(one_error("expect-exit code=300\n"), "1: code: ");
  EXPECT_EQ(one_error("region_read split=0\n"), "1: split: a piece must be at least 1 byte");
  EXPECT_EQ(one_error("expect-reply get_info save.x=nope\n"), "1: save.x: no field 'nope' to save");
  EXPECT_EQ(one_error("mem-write ram data=00\n"), "1: no memfd named 'ram'");
  EXPECT_EQ(one_error("get_info payload=00 truncate=1\n"),
            "1: payload= replaces the whole payload: do not combine it with truncate= or trailing=");
}

TEST(HarnessParser, EveryErrorOfAFileIsReported) {
  auto errs = parse("bogus\nconnect x=1\nregion_read nofield=2\nrepeat x\nend\n");
  ASSERT_EQ(errs.size(), 4u);
  EXPECT_EQ(errs[0].line, 1);
  EXPECT_EQ(errs[1].line, 2);
  EXPECT_EQ(errs[2].line, 3);
  EXPECT_EQ(errs[3].line, 4);
  EXPECT_EQ(errs[3].text().substr(0, 7), "t.vfu:4");
}

TEST(HarnessParser, VariablesMustBeSavedFirstAndFieldsExist) {
  EXPECT_TRUE(parse("expect-reply get_region_info save.n=size\nregion_read count=$n\n").empty());
  EXPECT_TRUE(parse("expect-request get_region_info save.i=index\nreply get_region_info index=$i\n").empty());
  EXPECT_TRUE(parse("expect-reply save.id=hdr.msg_id\nget_info hdr.msg_id=$id\n").empty());
  EXPECT_TRUE(parse("expect-reply get_region_info caps[3].areas[12].size=0x1000 caps[0].id=sparse_mmap\n").empty());
  EXPECT_FALSE(parse("expect-reply get_region_info caps[x].id=1\n").empty());
  EXPECT_FALSE(parse("expect-reply get_region_info caps.id=1\n").empty());
  EXPECT_FALSE(parse("expect-reply get_region_info caps[99999].id=1\n").empty());
}

TEST(HarnessValues, NumbersFlagsErrnosDurationsBytes) {
  uint64_t v = 0;
  std::string err;
  EXPECT_TRUE(parse_number("0", v, err) && v == 0);
  EXPECT_TRUE(parse_number("0x10", v, err) && v == 16);
  EXPECT_TRUE(parse_number("18446744073709551615", v, err) && v == UINT64_MAX);
  EXPECT_FALSE(parse_number("18446744073709551616", v, err));
  EXPECT_FALSE(parse_number("0x1ffffffffffffffff", v, err));
  EXPECT_FALSE(parse_number("-1", v, err));
  EXPECT_FALSE(parse_number("", v, err));
  EXPECT_FALSE(parse_number("12k", v, err));
  EXPECT_FALSE(parse_number("256", v, err, 255));

  flag_table t;
  t.bits = {{"read", 1}, {"write", 2}};
  EXPECT_TRUE(parse_flags("read|write", t, v, err) && v == 3);
  EXPECT_TRUE(parse_flags("write|0x10", t, v, err) && v == 0x12);
  EXPECT_FALSE(parse_flags("read||write", t, v, err));
  EXPECT_FALSE(parse_flags("exec", t, v, err));
  EXPECT_EQ(format_flags(3, t), "read|write (0x3)");
  EXPECT_EQ(format_flags(0x11, t), "read|0x10 (0x11)");

  int e = 0;
  EXPECT_TRUE(parse_errno("EINVAL", e, err) && e == EINVAL);
  EXPECT_TRUE(parse_errno("ENOTSUP", e, err) && e == ENOTSUP);
  EXPECT_TRUE(parse_errno("95", e, err) && e == 95);
  EXPECT_FALSE(parse_errno("4096", e, err));
  EXPECT_EQ(errno_text(ENOTSUP), "ENOTSUP");
  EXPECT_EQ(errno_text(E2BIG), "E2BIG");

  std::chrono::microseconds d;
  EXPECT_TRUE(parse_duration("250ms", d, err) && d.count() == 250000);
  EXPECT_TRUE(parse_duration("1.5s", d, err) && d.count() == 1500000);
  EXPECT_TRUE(parse_duration("40", d, err) && d.count() == 40000);
  EXPECT_TRUE(parse_duration("100us", d, err) && d.count() == 100);
  EXPECT_FALSE(parse_duration("s", d, err));
  EXPECT_FALSE(parse_duration("2h", d, err));

  std::vector<uint8_t> b;
  EXPECT_TRUE(parse_bytes("4f49c80d", b, err) && b == std::vector<uint8_t>({0x4f, 0x49, 0xc8, 0x0d}));
  EXPECT_TRUE(parse_bytes("", b, err) && b.empty());
  EXPECT_TRUE(parse_bytes("0102*3", b, err) && b.size() == 6 && b[4] == 1);
  EXPECT_FALSE(parse_bytes("abc", b, err));
  EXPECT_FALSE(parse_bytes("zz", b, err));
  EXPECT_FALSE(parse_bytes("00*x", b, err));

  std::vector<std::pair<std::string, uint32_t>> fl;
  EXPECT_TRUE(parse_fd_list("a,b*3", fl, err));
  ASSERT_EQ(fl.size(), 2u);
  EXPECT_EQ(fl[1].second, 3u);
  EXPECT_FALSE(parse_fd_list(",", fl, err));
  std::vector<size_t> pieces;
  EXPECT_TRUE(parse_pieces("1,15", pieces, err) && pieces.size() == 2);
}

TEST(HarnessFields, CommandNamesAndSchema) {
  EXPECT_EQ(*command_by_name("set_irqs"), 8);
  EXPECT_EQ(*command_by_name("device_set_irqs"), 8);
  EXPECT_EQ(*command_by_name("reset"), 13);
  EXPECT_FALSE(command_by_name("dirty_pages"));
  EXPECT_EQ(command_key(5), "get_region_info");
  EXPECT_EQ(command_key(14), "cmd_14");
  ASSERT_NE(find_field({5, true}, "caps[2].areas[7].offset"), nullptr);
  EXPECT_EQ(find_field({5, true}, "caps[2].areas[7].offset")->kind, field_kind::number);
  EXPECT_EQ(find_field({5, false}, "caps[0].id"), nullptr);  // requests have no caps
  EXPECT_EQ(find_field({2, false}, "flags")->kind, field_kind::flags);
  EXPECT_EQ(find_field({9, false}, "region")->max, UINT32_MAX);
  EXPECT_NE(find_field({16, false}, "page_size"), nullptr);
  EXPECT_NE(find_field({16, true}, "migration_flags"), nullptr);
  EXPECT_TRUE(schema({13, false}).empty());
}

TEST(HarnessFields, BuildEncodesWhatTheScenarioSays) {
  message m;
  std::string err;
  ASSERT_TRUE(build_message({9, false}, {{"region", "7"}, {"offset", "0x10"}, {"count", "4"}}, m, err)) << err;
  auto& rr = std::get<region_read_request>(m);
  EXPECT_EQ(rr.region, 7u);
  EXPECT_EQ(rr.offset, 16u);
  // Derived fields: a write's count from its data, SET_IRQS argsz from its bools.
  ASSERT_TRUE(build_message({10, false}, {{"region", "2"}, {"data", "010203"}}, m, err));
  EXPECT_EQ(std::get<region_write_request>(m).count, 3u);
  ASSERT_TRUE(build_message({10, false}, {{"region", "2"}, {"data", "010203"}, {"count", "9"}}, m, err));
  EXPECT_EQ(std::get<region_write_request>(m).count, 9u);  // a lie on purpose stays a lie
  ASSERT_TRUE(build_message({8, false}, {{"flags", "data_bool|action_trigger"}, {"count", "2"}, {"data", "0001"}}, m, err));
  EXPECT_EQ(std::get<set_irqs_request>(m).argsz, 22u);
  // The DEVICE_FEATURE index picks which data `page_size` belongs to.
  ASSERT_TRUE(build_message({16, false}, {{"page_size", "4096"}, {"flags", "get|dma_logging_report"}, {"length", "0x1000"}}, m, err)) << err;
  EXPECT_TRUE(std::holds_alternative<feature_logging_report>(std::get<device_feature_request>(m).data));
  ASSERT_TRUE(build_message({16, false}, {{"flags", "set|dma_logging_start"}, {"page_size", "4096"}, {"ranges[1].iova", "0x2000"}}, m, err));
  auto& ctl = std::get<feature_logging_ctl>(std::get<device_feature_request>(m).data);
  EXPECT_EQ(ctl.ranges.size(), 2u);
  EXPECT_FALSE(build_message({16, false}, {{"flags", "set|mig_device_state"}, {"page_size", "4096"}}, m, err));
  EXPECT_NE(err.find("feature index 2"), std::string::npos) << err;
  EXPECT_FALSE(build_message({9, false}, {{"nope", "1"}}, m, err));
  EXPECT_FALSE(build_message({9, false}, {{"region", "x"}}, m, err));
}

TEST(HarnessFields, FlattenShowsWhatTheMessageCarries) {
  region_info_reply r;
  r.argsz = 80;
  r.flags = region_flags::read | region_flags::mmap | region_flags::caps;
  r.index = 2;
  r.cap_offset = 32;
  r.size = 0x10000;
  region_cap c;
  c.id = region_cap_id::sparse_mmap;
  c.areas = {{0, 0x8000}, {0x8000, 0x8000}};
  r.caps.push_back(c);
  // Through the wire and back, as a reply would arrive.
  auto f = make_frame(3, r);
  auto m = decode(f);
  ASSERT_TRUE(m.ok());
  auto fl = flatten(*m);
  std::map<std::string, std::string> got;
  for (auto& [k, v] : fl) got[k] = to_string(v);
  EXPECT_EQ(got["flags"], "read|mmap|caps (0xd)");
  EXPECT_EQ(got["caps[0].id"], "sparse_mmap (1)");
  EXPECT_EQ(got["caps[0].areas[1].offset"], "32768 (0x8000)");
  EXPECT_EQ(got.count("caps[0].type"), 0u);  // not a TYPE cap
  // The mapping is symmetric: building from the flattened names gives the same bytes.
  arg_list args;
  for (auto& [k, v] : fl) {
    if (v.kind == field_kind::bytes) args.emplace_back(k, to_hex({v.bytes.data(), v.bytes.size()}));
    else args.emplace_back(k, std::to_string(v.num));
  }
  message again;
  std::string err;
  ASSERT_TRUE(build_message({5, true}, args, again, err)) << err;
  EXPECT_EQ(make_frame(3, again).bytes, f.bytes);
  error_reply e{9, EINVAL, {}};
  auto ef = flatten(message{e});
  ASSERT_EQ(ef.size(), 1u);
  EXPECT_EQ(ef[0].first, "errno");
  EXPECT_EQ(to_string(ef[0].second), "EINVAL");
}

TEST(HarnessFields, CapsJsonComparesAsJson) {
  field_value a, b;
  a.kind = b.kind = field_kind::text;
  a.text = R"({ "capabilities": { "max_msg_fds": 8 } })";
  b.text = R"({"capabilities":{"max_msg_fds":8}})";
  EXPECT_TRUE(same_value("version.caps_json", a, b));
  EXPECT_FALSE(same_value("other", a, b));
  b.text = R"({"capabilities":{"max_msg_fds":9}})";
  EXPECT_FALSE(same_value("caps_json", a, b));
}

TEST(HarnessReplay, IgnorePatterns) {
  EXPECT_TRUE(key_matches("version.caps_json", "version.caps_json"));
  EXPECT_TRUE(key_matches("version.*", "version.minor"));
  EXPECT_TRUE(key_matches("*.fds", "get_region_info.fds"));
  EXPECT_TRUE(key_matches("*", "anything"));
  EXPECT_FALSE(key_matches("version.minor", "version.major"));
  EXPECT_FALSE(key_matches("*.fds", "region_read.data"));
}

TEST(HarnessParser, GarbageNeverCrashesTheParser) {
  std::mt19937 rng(42);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz_-=|*.,[]$'\"\\# \t\n0123456789x";
  const std::vector<std::string> words = {"region_read ", "expect-reply ", "repeat 2\n", "end\n", "caps[0].", "hdr.",
                                          "save.x=", "fds=", "='", "\\\n", "0x", "flags=", "data="};
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    int n = int(rng() % 60);
    for (int k = 0; k < n; ++k) {
      if (rng() % 4 == 0) text += words[rng() % words.size()];
      else text += alphabet[rng() % alphabet.size()];
    }
    scenario s;
    auto errs = parse_scenario(text, "fuzz.vfu", s);
    for (auto& e : errs) EXPECT_GT(e.line, 0) << text;
  }
}

}  // namespace
