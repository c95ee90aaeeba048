// VERSION capabilities: parse_capabilities, to_json, and the negotiation rules.
#include <gtest/gtest.h>

#include "protocol/capabilities.hpp"
#include "protocol/limits.hpp"

namespace {

using namespace vfu::proto;

// The VERSION payloads seen in shared/vectors, verbatim.
const char* qemu_client_json =
    R"({"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, )"
    R"("max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, )"
    R"("write_multiple": true}})";
const char* lvu_server_json =
    R"({ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, "migration": { "pgsize": 4096 } } })";
const char* lvu_client_json = R"({"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}})";

std::string caps(const std::string& body) { return R"({"capabilities":{)" + body + "}}"; }

void expect_defaults(const capabilities& c) {
  EXPECT_EQ(c.max_msg_fds, 1u);
  EXPECT_EQ(c.max_data_xfer_size, 1048576u);
  EXPECT_EQ(c.max_dma_maps, 65535u);
  EXPECT_EQ(c.pgsizes, 4096u);
  EXPECT_FALSE(c.twin_socket);
  EXPECT_FALSE(c.twin_fd_index);
  EXPECT_FALSE(c.write_multiple);
  EXPECT_FALSE(c.migration);
  EXPECT_TRUE(c.present.empty());
}

void expect_rejected(const std::string& json, errc code) {
  auto c = parse_capabilities(json);
  ASSERT_FALSE(c.ok()) << json;
  EXPECT_EQ(c.err().code, code) << json << ": " << c.err().message();
  EXPECT_EQ(to_wire_errno(c.err()), code == errc::too_large ? E2BIG : EINVAL) << json;
}

// ---- parse ----------------------------------------------------------------------------------
TEST(Capabilities, DefaultsWhenAbsent) {
  for (const char* j : {"", "{}", R"({"capabilities":{}})", R"({"other":1})"}) {
    auto c = parse_capabilities(j);
    ASSERT_TRUE(c.ok()) << j << ": " << c.err().message();
    expect_defaults(*c);
  }
}

TEST(Capabilities, UnknownKeysIgnoredAndListed) {
  auto c = parse_capabilities(caps(R"("max_msg_fds":4,"future_thing":{"x":1},"zzz":"y")"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->max_msg_fds, 4u);
  EXPECT_EQ(c->unknown, (std::vector<std::string>{"future_thing", "zzz"}));
  EXPECT_EQ(c->present, (std::vector<std::string>{"max_msg_fds"}));
  EXPECT_TRUE(c->has("max_msg_fds"));
  EXPECT_FALSE(c->has("zzz"));
}

TEST(Capabilities, WrongTypesRejected) {
  expect_rejected(caps(R"("max_msg_fds":"16")"), errc::bad_json);
  expect_rejected(caps(R"("max_msg_fds":-1)"), errc::bad_json);
  expect_rejected(caps(R"("max_data_xfer_size":-4096)"), errc::bad_json);
  expect_rejected(caps(R"("max_msg_fds":true)"), errc::bad_json);
  expect_rejected(caps(R"("max_msg_fds":1.5)"), errc::bad_json);
  expect_rejected(caps(R"("max_msg_fds":null)"), errc::bad_json);
  expect_rejected(caps(R"("pgsizes":[4096])"), errc::bad_json);
  expect_rejected(caps(R"("write_multiple":1)"), errc::bad_json);
  expect_rejected(caps(R"("write_multiple":"true")"), errc::bad_json);
  expect_rejected(caps(R"("twin_socket":true)"), errc::bad_json);
  expect_rejected(caps(R"("twin_socket":{"supported":1})"), errc::bad_json);
  expect_rejected(caps(R"("twin_socket":{"supported":true,"fd_index":"0"})"), errc::bad_json);
  expect_rejected(caps(R"("migration":4096)"), errc::bad_json);
  expect_rejected(caps(R"("migration":{"pgsize":"4096"})"), errc::bad_json);
  expect_rejected(R"({"capabilities":[]})", errc::bad_json);
  expect_rejected(R"({"capabilities":1})", errc::bad_json);
}

TEST(Capabilities, NonObjectTopLevelAndInvalidJson) {
  for (const char* j : {"[]", "1", "\"capabilities\"", "null", "true"}) expect_rejected(j, errc::bad_json);
  for (const char* j : {"{", "{\"capabilities\":{}", "{'capabilities':{}}", "{\"capabilities\":{},}", "\x01"})
    expect_rejected(j, errc::bad_json);
  expect_rejected(std::string("{\"capabilities\":{}}") + '\0', errc::bad_json);
}

TEST(Capabilities, Ranges) {
  expect_rejected(caps(R"("max_data_xfer_size":0)"), errc::bad_value);
  auto ok = parse_capabilities(caps(R"("max_data_xfer_size":1)"));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->max_data_xfer_size, 1u);
  auto top = parse_capabilities(caps(R"("max_data_xfer_size":67108864)"));  // 64 MiB
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->max_data_xfer_size, limits::max_data_xfer_ceiling);
  expect_rejected(caps(R"("max_data_xfer_size":67108865)"), errc::bad_value);
  expect_rejected(caps(R"("max_data_xfer_size":18446744073709551615)"), errc::bad_value);
  // max_msg_fds: 0..1024.
  ASSERT_TRUE(parse_capabilities(caps(R"("max_msg_fds":0)")).ok());
  ASSERT_TRUE(parse_capabilities(caps(R"("max_msg_fds":1024)")).ok());
  expect_rejected(caps(R"("max_msg_fds":1025)"), errc::bad_value);
  // max_dma_maps: 1..2^30.
  expect_rejected(caps(R"("max_dma_maps":0)"), errc::bad_value);
  ASSERT_TRUE(parse_capabilities(caps(R"("max_dma_maps":1073741824)")).ok());
  expect_rejected(caps(R"("max_dma_maps":1073741825)"), errc::bad_value);
  // pgsizes: no bits below 4 KiB.
  auto pg = parse_capabilities(caps(R"("pgsizes":2101248)"));  // 4 KiB | 2 MiB
  ASSERT_TRUE(pg.ok());
  EXPECT_EQ(pg->pgsizes, 0x201000u);
  expect_rejected(caps(R"("pgsizes":2048)"), errc::bad_value);
  expect_rejected(caps(R"("pgsizes":4097)"), errc::bad_value);
  expect_rejected(caps(R"("pgsizes":0)"), errc::bad_value);
  // twin_socket.fd_index: 0..SCM_MAX_FD.
  expect_rejected(caps(R"("twin_socket":{"supported":true,"fd_index":254})"), errc::bad_value);
  // Too long.
  std::string pad(limits::max_caps_json, ' ');
  expect_rejected(caps("") + pad, errc::too_large);
  ASSERT_TRUE(parse_capabilities(caps("") + pad.substr(caps("").size())).ok());
}

TEST(Capabilities, TwinSocketAndWriteMultiple) {
  auto c = parse_capabilities(caps(R"("twin_socket":{"supported":true,"fd_index":0},"write_multiple":true)"));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->twin_socket);
  ASSERT_TRUE(c->twin_fd_index);
  EXPECT_EQ(*c->twin_fd_index, 0u);
  EXPECT_TRUE(c->write_multiple);
  auto empty = parse_capabilities(caps(R"("twin_socket":{})"));
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->twin_socket);  // supported defaults to false
  EXPECT_TRUE(empty->has("twin_socket"));
}

TEST(Capabilities, LegacyMigrationObjectAccepted) {
  auto c = parse_capabilities(caps(R"("migration":{"pgsize":4096,"max_bitmap_size":268435456})"));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->migration);
  EXPECT_EQ(c->migration->pgsize, 4096u);
  EXPECT_EQ(c->migration->max_bitmap_size, 268435456u);
  auto e = parse_capabilities(caps(R"("migration":{})"));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(e->migration);
  EXPECT_FALSE(e->migration->pgsize);
}

TEST(Capabilities, RealQemuClientJson) {
  auto c = parse_capabilities(qemu_client_json);
  ASSERT_TRUE(c.ok()) << c.err().message();
  EXPECT_EQ(c->max_msg_fds, 16u);
  EXPECT_EQ(c->max_data_xfer_size, 1048576u);
  EXPECT_EQ(c->max_dma_maps, 65535u);
  EXPECT_EQ(c->pgsizes, 4096u);
  EXPECT_TRUE(c->write_multiple);
  ASSERT_TRUE(c->migration);
  EXPECT_EQ(c->migration->max_bitmap_size, 268435456u);
  EXPECT_TRUE(c->unknown.empty());
}

TEST(Capabilities, RealLibvfioUserJson) {
  auto s = parse_capabilities(lvu_server_json);
  ASSERT_TRUE(s.ok()) << s.err().message();
  EXPECT_EQ(s->max_msg_fds, 8u);
  EXPECT_EQ(s->max_data_xfer_size, 1048576u);
  ASSERT_TRUE(s->migration);
  EXPECT_EQ(s->migration->pgsize, 4096u);
  EXPECT_FALSE(s->migration->max_bitmap_size);
  EXPECT_FALSE(s->write_multiple);
  EXPECT_EQ(s->pgsizes, 4096u);  // absent: default
  auto c = parse_capabilities(lvu_client_json);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->max_msg_fds, 32u);
  EXPECT_EQ(c->max_data_xfer_size, 1024u);
}

// ---- to_json --------------------------------------------------------------------------------
void expect_same(const capabilities& a, const capabilities& b) {
  EXPECT_EQ(a.max_msg_fds, b.max_msg_fds);
  EXPECT_EQ(a.max_data_xfer_size, b.max_data_xfer_size);
  EXPECT_EQ(a.max_dma_maps, b.max_dma_maps);
  EXPECT_EQ(a.pgsizes, b.pgsizes);
  EXPECT_EQ(a.twin_socket, b.twin_socket);
  EXPECT_EQ(a.twin_fd_index, b.twin_fd_index);
  EXPECT_EQ(a.write_multiple, b.write_multiple);
  ASSERT_EQ(bool(a.migration), bool(b.migration));
  if (a.migration) {
    EXPECT_EQ(a.migration->pgsize, b.migration->pgsize);
    EXPECT_EQ(a.migration->max_bitmap_size, b.migration->max_bitmap_size);
  }
}

TEST(Capabilities, ToJsonRoundTrip) {
  for (const char* j : {qemu_client_json, lvu_server_json, lvu_client_json}) {
    auto c = parse_capabilities(j);
    ASSERT_TRUE(c.ok());
    for (bool only : {false, true}) {
      auto text = to_json(*c, only);
      auto back = parse_capabilities(text);
      ASSERT_TRUE(back.ok()) << text;
      expect_same(*c, *back);
      EXPECT_EQ(to_json(*back, only), text);
    }
  }
  capabilities t;
  t.twin_socket = true;
  t.twin_fd_index = 0;
  t.write_multiple = true;
  auto back = parse_capabilities(to_json(t));
  ASSERT_TRUE(back.ok());
  expect_same(t, *back);
}

TEST(Capabilities, ToJsonOnlyPresent) {
  auto c = parse_capabilities(lvu_client_json);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(to_json(*c, true), R"({"capabilities":{"max_data_xfer_size":1024,"max_msg_fds":32}})");
  capabilities d;
  EXPECT_EQ(to_json(d),
            R"({"capabilities":{"max_data_xfer_size":1048576,"max_dma_maps":65535,"max_msg_fds":1,"pgsizes":4096}})");
  EXPECT_EQ(to_json(d, true), R"({"capabilities":{}})");
}

// ---- server_negotiate ------------------------------------------------------------------------
TEST(Capabilities, ServerNegotiate) {
  auto client = parse_capabilities(qemu_client_json);
  ASSERT_TRUE(client.ok());
  server_offer offer;
  auto n = server_negotiate(0, 0, *client, offer);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->major, 0);
  EXPECT_EQ(n->minor, 0);  // min(theirs, ours)
  EXPECT_EQ(n->ours.max_msg_fds, limits::our_max_msg_fds);
  EXPECT_EQ(n->send_max_fds(), 16u);
  EXPECT_EQ(n->send_max_data(), 1048576u);
  EXPECT_EQ(n->recv_max_data(), limits::our_max_data_xfer);
  EXPECT_TRUE(n->ours.write_multiple);
  ASSERT_TRUE(n->ours.migration);  // legacy key answered in kind
  EXPECT_EQ(n->ours.migration->pgsize, 4096u);
  auto hi = server_negotiate(0, 7, *client, offer);
  ASSERT_TRUE(hi.ok());
  EXPECT_EQ(hi->minor, our_minor);
  auto bad = server_negotiate(1, 0, *client, offer);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code, errc::unsupported);
}

TEST(Capabilities, ServerNegotiateTwinSocketNeedsBothSides) {
  capabilities client;
  server_offer offer;
  offer.twin_socket = true;
  EXPECT_FALSE(server_negotiate(0, 2, client, offer)->ours.twin_socket);
  client.twin_socket = true;
  EXPECT_TRUE(server_negotiate(0, 2, client, offer)->ours.twin_socket);
  offer.twin_socket = false;
  EXPECT_FALSE(server_negotiate(0, 2, client, offer)->ours.twin_socket);
}

TEST(Capabilities, SendMaxFdsClampedToScmMaxFd) {
  capabilities client;
  client.max_msg_fds = 1024;
  auto n = server_negotiate(0, 0, client, server_offer{});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->send_max_fds(), limits::scm_max_fd);
}

// ---- client_check_reply ---------------------------------------------------------------------
TEST(Capabilities, ClientCheckReply) {
  capabilities proposed;
  proposed.twin_socket = true;
  auto server = parse_capabilities(lvu_server_json);
  ASSERT_TRUE(server.ok());
  auto n = client_check_reply(0, 2, proposed, 0, 2, *server, 0);
  ASSERT_TRUE(n.ok()) << n.err().message();
  EXPECT_EQ(n->send_max_fds(), 8u);
  EXPECT_TRUE(client_check_reply(0, 2, proposed, 0, 0, *server, 0).ok());  // lower minor: fine

  auto major = client_check_reply(0, 2, proposed, 1, 0, *server, 0);
  ASSERT_FALSE(major.ok());
  EXPECT_EQ(major.err().code, errc::protocol_violation);
  EXPECT_EQ(to_wire_errno(major.err()), EPROTO);
  auto minor = client_check_reply(0, 2, proposed, 0, 3, *server, 0);
  ASSERT_FALSE(minor.ok());
  EXPECT_EQ(minor.err().code, errc::protocol_violation);
}

TEST(Capabilities, ClientCheckReplyTwinSocket) {
  capabilities offered;
  offered.twin_socket = true;
  capabilities not_offered;
  auto twin = parse_capabilities(caps(R"("twin_socket":{"supported":true,"fd_index":0})"));
  ASSERT_TRUE(twin.ok());
  EXPECT_TRUE(client_check_reply(0, 2, offered, 0, 2, *twin, 1).ok());
  // Not offered by us.
  auto r = client_check_reply(0, 2, not_offered, 0, 2, *twin, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::protocol_violation);
  // fd_index out of range (no fd at index 0) or missing.
  r = client_check_reply(0, 2, offered, 0, 2, *twin, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::protocol_violation);
  auto idx1 = parse_capabilities(caps(R"("twin_socket":{"supported":true,"fd_index":1})"));
  ASSERT_TRUE(idx1.ok());
  EXPECT_FALSE(client_check_reply(0, 2, offered, 0, 2, *idx1, 1).ok());
  EXPECT_TRUE(client_check_reply(0, 2, offered, 0, 2, *idx1, 2).ok());
  auto no_idx = parse_capabilities(caps(R"("twin_socket":{"supported":true})"));
  ASSERT_TRUE(no_idx.ok());
  EXPECT_FALSE(client_check_reply(0, 2, offered, 0, 2, *no_idx, 1).ok());
  // fds without twin socket.
  capabilities plain;
  r = client_check_reply(0, 2, offered, 0, 2, plain, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::bad_fds);
  EXPECT_EQ(to_wire_errno(r.err()), EINVAL);
  // Server declines (supported false): single-socket mode, fine.
  auto declined = parse_capabilities(caps(R"("twin_socket":{"supported":false})"));
  ASSERT_TRUE(declined.ok());
  EXPECT_TRUE(client_check_reply(0, 2, offered, 0, 2, *declined, 0).ok());
}

TEST(Capabilities, ClientCheckReplyValues) {
  capabilities proposed;
  capabilities server;
  server.pgsizes = 2048;  // only reachable by a hand-built value: the parser rejects it
  auto r = client_check_reply(0, 2, proposed, 0, 2, server, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::bad_value);
  server = capabilities{};
  server.max_msg_fds = 0;
  r = client_check_reply(0, 2, proposed, 0, 2, server, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code, errc::bad_value);
}

}  // namespace
