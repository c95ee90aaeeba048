// The VERSION exchange our endpoints really make, checked against what QEMU and
// libvfio-user accept (peer_rules.hpp, transcribed from their source). A server that offered
// max_msg_fds 64 passed every test of its own and was refused by QEMU ("malformed
// max_msg_fds"): these tests state the peers' rules so that cannot happen again.
#include <gtest/gtest.h>

#include <thread>

#include "actors/endpoint.hpp"
#include "device/samples.hpp"
#include "tests/interop/peer_rules.hpp"
#include "tests/test_support.hpp"

namespace {

using namespace vfu;
using namespace vfu::proto;
using namespace std::chrono_literals;

// The VERSION requests the real clients send (as in ../shared/vectors; QEMU's text is its
// caps_json() output, 214 bytes with the header).
const char* qemu_caps =
    R"({"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, )"
    R"("migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}})";
const char* lvu_client_caps = R"({"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}})";

frame version_frame(uint16_t minor, const std::string& json) {
  version_request v;
  v.major = 0;
  v.minor = minor;
  v.caps_json = json;
  return make_frame(0, v);
}

frame reply_with(uint16_t minor, const std::string& json, uint16_t msg_id = 0) {
  version_reply v;
  v.minor = minor;
  v.caps_json = json;
  return make_frame(msg_id, v);
}

// The rules themselves refuse what the peers' source refuses.
TEST(PeerRules, QemuRefusesWhatItsSourceRefuses) {
  size_t req = version_frame(0, qemu_caps).bytes.size();
  EXPECT_EQ(req, 214u) << "QEMU's VERSION request is 214 bytes";
  auto qemu = [&](uint16_t minor, const std::string& caps) { return test::peer::qemu_refuses_reply(req, reply_with(minor, caps)); };
  EXPECT_EQ(qemu(0, R"({"capabilities":{"max_msg_fds":16}})"), "");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"max_msg_fds":64}})"), "malformed max_msg_fds");
  EXPECT_EQ(qemu(1, R"({"capabilities":{}})"), "incompatible server version");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"max_data_xfer_size":134217728}})"), "malformed max_data_xfer_size");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"pgsizes":2048}})"), "pgsize too small");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"max_dma_maps":65536}})"), "max_dma_maps too large");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"write_multiple":1}})"), "malformed write_multiple");
  EXPECT_EQ(qemu(0, R"({"capabilities":{"migration":{"max_bitmap_size":536870912}}})"), "max_bitmap_size too large");
  EXPECT_EQ(qemu(0, std::string(R"({"capabilities":{"x":")") + std::string(200, 'a') + "\"}}"),
            "reply larger than recv buffer");
}

TEST(PeerRules, LibvfioUserRefusesWhatItsSourceRefuses) {
  EXPECT_EQ(test::peer::lvu_client_refuses_reply(reply_with(2, R"({"capabilities":{"max_msg_fds":8}})")), "");
  EXPECT_EQ(test::peer::lvu_client_refuses_reply(reply_with(3, "{}")), "bad minor");
  EXPECT_NE(test::peer::lvu_client_refuses_reply(reply_with(2, R"({"capabilities":{"twin_socket":{"supported":false}}})")), "");
  EXPECT_EQ(test::peer::lvu_server_refuses(version_frame(2, lvu_client_caps)), "");
  EXPECT_EQ(test::peer::lvu_server_refuses(version_frame(2, R"({"capabilities":{"max_msg_fds":2048}})")),
            "EINVAL: refusing client max_msg_fds");
  EXPECT_NE(test::peer::lvu_server_refuses(version_frame(2, R"({"capabilities":{"max_data_xfer_size":4194304}})")), "");
}

class VersionTest : public test::socket_dir_test {
 protected:
  void SetUp() override {
    socket_dir_test::SetUp();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    rt_.reset();
    socket_dir_test::TearDown();
  }
  /// Our server for `device` answers `request`; returns the reply frame.
  std::optional<frame> server_answer(const std::string& device, const frame& request) {
    auto dev = dev::spawn_device(rt_->system(), dev::make_sample(device));
    auto [ours, theirs] = test::socket_pair();
    auto ep = endpoint::serve_fd(*rt_, std::move(ours), {}, dev);
    EXPECT_TRUE(ep.ok());
    test::raw_peer peer(std::move(theirs));
    EXPECT_TRUE(peer.send(request));
    auto r = peer.recv();
    if (ep) (*ep)->close();
    caf::anon_send_exit(dev, caf::exit_reason::user_shutdown);
    return r;
  }
  std::unique_ptr<runtime> rt_;
};

// QEMU's vfio-user-pci takes our server's answer for every sample device.
TEST_F(VersionTest, QemuAcceptsOurServersAnswer) {
  auto req = version_frame(0, qemu_caps);
  for (const char* device : {"gpio", "dma-test", "ram"}) {
    auto r = server_answer(device, req);
    ASSERT_TRUE(r) << device;
    auto text = test::peer::detail::caps_text(*r);
    EXPECT_EQ(test::peer::qemu_refuses_reply(req.bytes.size(), *r), "")
        << device << " answered " << text.value_or("(not NUL-terminated)");
  }
}

// So does libvfio-user's sample client.
TEST_F(VersionTest, LibvfioUserClientAcceptsOurServersAnswer) {
  for (const char* device : {"gpio", "dma-test", "ram"}) {
    auto r = server_answer(device, version_frame(2, lvu_client_caps));
    ASSERT_TRUE(r) << device;
    EXPECT_EQ(test::peer::lvu_client_refuses_reply(*r), "") << device;
  }
}

// libvfio-user's server (and QEMU's x-remote, which embeds an older one) takes the VERSION
// our client sends.
TEST_F(VersionTest, LibvfioUserServerAcceptsOurClientsVersion) {
  auto lst = test::listen_unix(path_);
  ASSERT_TRUE(lst);
  endpoint_config cfg;
  cfg.reconnect = false;
  std::optional<frame> got;
  std::thread server([&] {
    test::raw_peer peer(proto::unique_fd(::accept4(lst.get(), nullptr, nullptr, SOCK_CLOEXEC)));
    got = peer.recv();
    if (got) peer.send(reply_with(0, R"({"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}})", got->hdr().msg_id));
  });
  auto ep = endpoint::connect(*rt_, path_, cfg, caf::actor{});
  server.join();
  ASSERT_TRUE(got);
  EXPECT_EQ(test::peer::lvu_server_refuses(*got), "") << test::peer::detail::caps_text(*got).value_or("?");
  if (ep) (*ep)->close();
}

}  // namespace
