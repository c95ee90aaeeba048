// A test with a runtime and a server and a client endpoint, that checks no fd leaked: the
// baseline is counted before the runtime exists (its threads' start-up cannot overlap the
// count), and the endpoints go before the runtime.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "actors/endpoint.hpp"
#include "tests/test_support.hpp"

namespace vfu::test {

template <class Base = ::testing::Test>
class pair_fixture : public Base {
 protected:
  void SetUp() override {
    fds_before_ = count_open_fds();
    rt_ = std::make_unique<runtime>();
  }
  void TearDown() override {
    server_.reset();
    client_.reset();
    rt_.reset();
    EXPECT_EQ(count_open_fds(), fds_before_) << "file descriptors leaked";
  }
  int fds_before_ = 0;
  std::unique_ptr<runtime> rt_;
  std::unique_ptr<endpoint> server_, client_;
};

}  // namespace vfu::test
