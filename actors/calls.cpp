// calls.cpp: the endpoint's requests from plain threads (an emulator's vCPU): they register
// in the pending table, write their frames themselves, and (calls) wait on their own slot,
// reading the socket themselves while nobody else does (stream_transport's leader). One
// wake-up per call, as for a raw socket client. pending_table.hpp has the lifecycles.
#define CAF_LOG_COMPONENT "vfu"
#include "actors/endpoint.hpp"
#include "actors/supervisor.hpp"

namespace vfu {

std::shared_ptr<stream_transport> endpoint::ready_transport(uint64_t& epoch, proto::error& err) {
  std::lock_guard<std::mutex> g(status_->m);
  if (status_->state != conn_state::ready) {
    err = proto::error(proto::errc::not_connected, "no connection");
    return nullptr;
  }
  epoch = status_->epoch;
  return status_->transport;
}

std::optional<uint16_t> endpoint::register_request(proto::frame& frame, const std::shared_ptr<call_slot>& slot,
                                                   uint64_t epoch, std::chrono::milliseconds timeout, proto::error& err) {
  auto h = frame.hdr();
  if (h.no_reply()) {  // nothing comes back: never pending
    frame.set_msg_id(table_->noreply_id());
    return frame.hdr().msg_id;
  }
  // Back-pressure: room among the outstanding requests, for as long as the call may take.
  auto t = cfg_.correlation.timeout_for(h.command, timeout);
  auto deadline = clock::now() + t;
  auto id = table_->add(pending_table::requester{slot, {}, false}, h.command, deadline, epoch, t);
  if (!id) {
    err = id.err();
    return std::nullopt;
  }
  frame.set_msg_id(*id);
  if (!slot) arm_sweep(corr_, *table_, deadline);  // a no-wait request: the table's timer times it out
  return *id;
}

call_result endpoint::await_reply(uint16_t id, uint16_t cmd, call_slot& slot, clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  if (slot.wait_for(std::max(left, std::chrono::milliseconds(0))) || !table_->expire(id))
    return slot.take();  // the reply, or the connection's loss
  CAF_SET_LOGGER_SYS(&rt_.system());
  CAF_LOG_WARNING(proto::command_name(cmd) << " id " << id << " timed out");
  return call_result{nullptr, proto::error(proto::errc::timeout, std::string(proto::command_name(cmd)) + " timed out")};
}

std::optional<uint16_t> endpoint::send_request(proto::frame frame, std::shared_ptr<call_slot> slot,
                                              std::chrono::milliseconds timeout, proto::error& err,
                                              transport_leader* lead, proto::byte_view tail) {
  uint64_t epoch = 0;
  auto tr = ready_transport(epoch, err);
  if (!tr) return std::nullopt;
  auto id = register_request(frame, slot, epoch, timeout, err);
  if (!id) return std::nullopt;
  if (lead) lead->begin(tr);  // before the write, so that the reply cannot wake the loop
  auto st = tail.size ? tr->send_gathered(frame.bytes.data(), frame.bytes.size(), tail.data, tail.size)
                      : tr->send(make_frame_ptr(std::move(frame)));
  if (!st) err = st.err();  // see call_frame()
  return id;
}

call_result endpoint::call(const proto::message& m, proto::fd_list fds, std::chrono::milliseconds timeout) {
  return call_frame(proto::make_frame(0, m, 0, std::move(fds)), timeout);
}

call_result endpoint::call_frame(proto::frame frame, std::chrono::milliseconds timeout, reply_landing* landing,
                                 proto::byte_view tail) {
  auto cmd = frame.hdr().command;
  timeout = cfg_.correlation.timeout_for(cmd, timeout);
  auto deadline = clock::now() + timeout;
  pending_table::caller_scope in_call(*table_);
  auto slot = std::make_shared<call_slot>();
  proto::error err;
  transport_leader lead;
  auto id = send_request(std::move(frame), slot, timeout, err, cfg_.caller_reads ? &lead : nullptr, tail);
  if (!id) return call_result{nullptr, err};
  if (err) {  // not written: nothing will come back
    table_->remove(*id);
    return call_result{nullptr, err};
  }
  if (landing) {
    landing->msg_id = *id;
    landing->from = landing->to = 0;
  }
  lead.wait(*slot, deadline, landing);
  lead.end();
  return await_reply(*id, cmd, *slot, deadline);
}

std::vector<call_result> endpoint::call_many(const std::vector<proto::message>& msgs, std::chrono::milliseconds timeout) {
  std::vector<call_result> out(msgs.size());
  pending_table::caller_scope in_call(*table_);
  // Never more at once than the back-pressure bound: the calls of one group cannot wait
  // for each other's completion.
  size_t group = std::max<uint32_t>(1, cfg_.correlation.max_outstanding);
  for (size_t base = 0; base < msgs.size(); base += group) {
    size_t n = std::min(group, msgs.size() - base);
    proto::error err;
    uint64_t epoch = 0;
    auto tr = ready_transport(epoch, err);
    struct pending {
      size_t i;
      uint16_t id, cmd;
      std::shared_ptr<call_slot> slot;
      clock::time_point deadline;
    };
    std::vector<pending> sent;
    std::vector<frame_ptr> frames;
    sent.reserve(n);
    frames.reserve(n);
    auto now = clock::now();
    for (size_t i = base; i < base + n; ++i) {
      if (!tr) {
        out[i] = call_result{nullptr, err};
        continue;
      }
      auto f = proto::make_frame(0, msgs[i]);
      uint16_t cmd = f.hdr().command;
      auto to = cfg_.correlation.timeout_for(cmd, timeout);
      auto slot = std::make_shared<call_slot>();
      proto::error e;
      auto id = register_request(f, slot, epoch, to, e);
      if (!id) {
        out[i] = call_result{nullptr, e};
        continue;
      }
      sent.push_back(pending{i, *id, cmd, std::move(slot), now + to});
      frames.push_back(make_frame_ptr(std::move(f)));
    }
    if (frames.empty()) continue;
    transport_leader lead;
    if (cfg_.caller_reads) lead.begin(tr);
    if (auto st = tr->send_many(frames.data(), frames.size()); !st) {
      for (auto& p : sent) {
        table_->remove(p.id);
        out[p.i] = call_result{nullptr, st.err()};
      }
      continue;
    }
    for (auto& p : sent) lead.wait(*p.slot, p.deadline);
    lead.end();
    for (auto& p : sent) out[p.i] = await_reply(p.id, p.cmd, *p.slot, p.deadline);
  }
  return out;
}

proto::result<proto::message> endpoint::call_decoded(const proto::message& m, proto::fd_list fds,
                                                     std::chrono::milliseconds timeout) {
  proto::fd_list ignored;
  return call_decoded(m, std::move(fds), ignored, timeout);
}

proto::result<proto::message> endpoint::call_decoded(const proto::message& m, proto::fd_list fds,
                                                     proto::fd_list& reply_fds, std::chrono::milliseconds timeout) {
  auto r = call(m, std::move(fds), timeout);
  if (auto e = r.failure()) return e;
  proto::decode_limits lim;
  {
    std::lock_guard<std::mutex> g(status_->m);
    lim.max_data_xfer = status_->neg.ours.max_data_xfer_size;
  }
  auto d = proto::decode(*r.reply, cfg_.quirks, lim);
  if (d) reply_fds = std::move(r.reply->fds);
  return d;
}

// post() and post_noreply() take the same way as call(), so that everything one thread
// sends stays in the order it was sent.
void endpoint::post(const proto::message& m, proto::fd_list fds) { post_frame(proto::make_frame(0, m, 0, std::move(fds))); }

void endpoint::post_noreply(const proto::message& m) { post_frame(proto::make_frame(0, m, proto::hflags::no_reply)); }

void endpoint::post_frame(proto::frame f) {
  proto::error err;
  auto h = f.hdr();
  auto id = send_request(std::move(f), nullptr, std::chrono::milliseconds(0), err);
  if (id && err && !h.no_reply()) table_->remove(*id);  // not written: nothing comes back
  if (!id || err) {
    CAF_SET_LOGGER_SYS(&rt_.system());
    CAF_LOG_WARNING((h.no_reply() ? "posted " : "no-wait ") << proto::command_name(h.command)
                                                            << " not sent: " << err.message());
  }
}

call_result endpoint::wait_posted(std::chrono::milliseconds timeout) { return table_->wait_posted(timeout); }

}  // namespace vfu
