// frame_reader.cpp: stream_transport's read passes, by the io thread or a leading caller
// (one at a time: rm_). A pass reads with recvmsg until the socket is empty, wraps each fd
// in a unique_fd at once, feeds the assembler (the rest of a large body is read straight
// into its frame, or a leader's reply data straight into the caller's buffer), and hands
// what it read on (deliver).
#define CAF_LOG_COMPONENT "vfu"
#include "actors/stream_transport.hpp"
#include "protocol/fd_passing.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "actors/pending_table.hpp"
#include "actors/syscalls.hpp"
#include "protocol/limits.hpp"

namespace vfu {

namespace {
// One read takes up to this much. A large frame's body is read straight into the frame
// after the first read (direct_read_min), so a smaller chunk copies less of it.
constexpr size_t read_chunk = 64 * 1024;
// Bodies with at least this much still to come are read straight into their frame.
constexpr size_t direct_read_min = 64 * 1024;
// Reads per pass before yielding to other sockets on the io thread.
constexpr int reads_per_wakeup = 16;

/// Where one recvmsg puts its bytes.
struct read_plan {
  iovec iov{};
  bool into_body = false;  ///< the current frame's body (asm_.body_window)
  uint8_t* land = nullptr;  ///< the leader's landing (a part of its body window)
  size_t land_at = 0;
};

using proto::take_fds;

// A leader's own reply with a landing: its data goes straight into the caller's buffer,
// from where the body window starts (the frame keeps a hole there; nobody reads it). Until
// the data starts, reads stop where it starts, so that all of it can land.
read_plan plan(proto::frame_assembler& as, reply_landing* landing, uint8_t* bounce) {
  read_plan p;
  auto win = as.body_window(landing ? 1 : direct_read_min);
  size_t upto = 0;  // read at most this much (0: no limit)
  if (landing) {
    auto& L = *landing;
    if (win.first) {
      auto [h, off] = as.body_position();
      bool ours = h.msg_id == L.msg_id && h.is_reply() && !h.is_error() && h.msg_size == L.frame_offset + L.len;
      if (ours && off < L.frame_offset) {
        upto = L.frame_offset - off;
      } else if (ours && (L.from == L.to || off - L.frame_offset == L.to)) {
        p.land_at = off - L.frame_offset;
        p.land = L.dest + p.land_at;
      }
    } else if (as.frame_have() < L.frame_offset && L.len >= direct_read_min) {
      upto = L.frame_offset - as.frame_have();  // the header is not complete yet: it may be ours
    }
  }
  if (win.first && !p.land && !upto && win.second < direct_read_min) win = {nullptr, 0};
  p.into_body = win.first != nullptr;
  p.iov = p.land ? iovec{p.land, win.second} : win.first ? iovec{win.first, win.second} : iovec{bounce, read_chunk};
  if (upto) p.iov.iov_len = std::min(p.iov.iov_len, upto);
  return p;
}
}  // namespace

/// What a pass has seen so far.
struct stream_transport::read_outcome {
  proto::error fail;
  bool got = false, eof = false, clean_eof = false;
  uint64_t bytes = 0;
};

bool stream_transport::read_pass() {
  std::unique_lock<std::mutex> g(rm_, std::try_to_lock);
  if (!g) return false;  // a leader reads: it handles what arrives
  if (!gate_.readable()) return false;
  return read_pass_locked(false);
}

bool stream_transport::read_pass_locked(bool block) {
  // What the reads assemble, in a vector per reading thread that keeps its capacity: most
  // reads by a leader end in its own reply, which needs no batch for an actor at all.
  static VFU_HOT_TLS std::vector<proto::frame_assembler::event> evs;
  evs.clear();
  read_outcome out;
  for (int i = 0; i < reads_per_wakeup; ++i) {
    // (evs.size() frames read so far may all be requests: at most 64 KiB of them.)
    if (flow_.stop_reading(evs.size(), out.bytes)) break;
    if (!read_once(block && i == 0, evs, out)) break;  // a leader waits for its first read
  }
  if (!out.got && !out.fail && !asm_.failed()) return false;  // the socket was empty (EAGAIN)
  if (closing_ && out.eof) {  // our own close() shut the read side to wake a leader
    stop();
    evs.clear();  // (the connection is over: what it read goes, with its fds)
    return true;
  }
  event_loop::note_active(*this);
  deliver(evs, out);
  return true;
}

bool stream_transport::read_once(bool wait, std::vector<proto::frame_assembler::event>& evs, read_outcome& out) {
  // One buffer per reading thread serves every connection (one per connection would cost
  // 64 KiB of RSS per idle client). Not zeroed: only bytes a read wrote are used.
  static VFU_HOT_TLS std::unique_ptr<uint8_t[]> bounce(new uint8_t[read_chunk]);
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * proto::limits::scm_max_fd)];
  asm_.set_max_frame(max_frame_.load(std::memory_order_relaxed));
  auto p = plan(asm_, landing_, bounce.get());
  msghdr mh{};
  mh.msg_iov = &p.iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  ssize_t n = sys::recvmsg(fd_, &mh, (wait ? 0 : MSG_DONTWAIT) | MSG_CMSG_CLOEXEC);  // (SO_RCVTIMEO slices)
  if (n < 0) {
    if (errno == EINTR && !wait) return true;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;  // (a leader's slice ended)
    out.fail = proto::error(proto::errc::io_error, errno, std::string("recvmsg: ") + std::strerror(errno));
    return false;
  }
  proto::fd_list fds;
  take_fds(mh, fds);
  if (mh.msg_flags & MSG_CTRUNC) {
    out.fail = proto::error(proto::errc::bad_fds, "MSG_CTRUNC: file descriptors were discarded");
    return false;
  }
  if (n == 0) {
    out.eof = true;
    out.clean_eof = !asm_.mid_frame();
    out.fail = out.clean_eof ? proto::error(proto::errc::peer_gone, ECONNRESET, "peer closed the connection")
                             : proto::error(proto::errc::peer_gone, "EOF in the middle of a frame");
    return false;
  }
  if (p.land) {
    if (landing_->from == landing_->to) landing_->from = landing_->to = p.land_at;
    landing_->to += size_t(n);
  }
  out.got = true;
  bytes_in += uint64_t(n);
  out.bytes += uint64_t(n);
  bool had_fds = !fds.empty();
  if (p.into_body) asm_.body_filled(size_t(n), std::move(fds), evs);
  else asm_.feed(static_cast<uint8_t*>(p.iov.iov_base), size_t(n), std::move(fds), evs);
  // A stream recvmsg without fds returns short only when the queue is empty (it stops
  // early only after a message with fds): skip the read that would say EAGAIN.
  return !asm_.failed() && !(size_t(n) < p.iov.iov_len && !had_fds);
}

void stream_transport::refuse_requests(const event_batch& reqs) {
  for (auto& ev : *reqs) {
    auto h = ev.kind == proto::frame_assembler::event::frame_ready ? ev.f.hdr() : ev.hdr;
    CAF_LOG_WARNING("refused " << proto::describe(h, ev.f.fds.size()) << ": a request on the socket of the replies to ours");
    ++misrouted;
    if (!h.no_reply()) (void)send(make_frame_ptr(proto::make_error_reply(h, EINVAL)));
    flow_.request_done(request_bytes(ev));
  }  // (their fds close with the batch)
}

void stream_transport::deliver(std::vector<proto::frame_assembler::event>& evs, read_outcome& out) {
  auto r = route(evs, flow_, &spare_batch_);
  frames_in += r.frames;
  rejected_requests += r.rejected_requests;
  rejected_replies += r.rejected_replies.size();
  uint8_t lanes = lanes_.load(std::memory_order_relaxed);
  if (!(lanes & peer_replies) && (!r.replies.empty() || !r.rejected_replies.empty())) {
    for (auto& f : r.replies) CAF_LOG_WARNING("dropped " << proto::describe(f->hdr(), f->fds.size()) << ": a reply on the socket of the peer's requests");
    misrouted += r.replies.size() + r.rejected_replies.size();
    r.replies.clear();
    r.rejected_replies.clear();
  }
  if (!(lanes & peer_requests) && r.requests) refuse_requests(std::exchange(r.requests, nullptr));
  // Replies complete their requests here: a blocked thread wakes from here, an actor's
  // result goes to the correlation actor.
  if (table_) {
    pending_table::completions done;
    for (auto& [h, why] : r.rejected_replies) {
      CAF_LOG_WARNING("rejected " << proto::describe(h, 0) << ": " << why.message());
      table_->reject(h, why, done);
    }
    for (auto& f : r.replies) {
      CAF_LOG_DEBUG("recv " << proto::describe(f->hdr(), f->fds.size()));
      auto o = table_->complete(f, done);
      if (o == pending_table::outcome::late) CAF_LOG_DEBUG("dropped late reply " << proto::describe(f->hdr(), 0));
      if (o == pending_table::outcome::unexpected) CAF_LOG_WARNING("dropped unexpected reply " << proto::describe(f->hdr(), 0));
    }
    table_->settle(done);
  }
  bool fatal = asm_.failed() || out.fail;
  // (Also after replies alone: the last reply we awaited brings the bounds back down.)
  if (!fatal && !gate_.has(read_gate::flow) && flow_.stop_reading()) {
    ++pauses;
    gate_.set(read_gate::flow);  // until request_done() sees half of them answered, or we send a request
    CAF_LOG_DEBUG("stop reading: " << flow_.unanswered() << " requests (" << flow_.unanswered_bytes() << " bytes) unanswered");
    sync_read_events();
  }
  // Requests before the end: an EOF's drain (socket_actor) must find them in the queue.
  if (r.requests) {
    // On the dispatcher's event loop, in place if it is idle (direct_requests); otherwise (a
    // caller's thread, a busy dispatcher) as a message. Either under the reader's lock, so
    // that batches reach the dispatcher in the order they were read, whoever reads them.
    // (Answering them never needs that lock.)
    if (requests_direct_ && event_loop::on_loop_of(requests_->home_system()) &&
        requests_direct_->take_now(r.requests, owner_, shared_from_this())) {
      handed.fetch_add(1, std::memory_order_relaxed);
      if (r.requests.use_count() == 1) {  // (the dispatcher kept nothing of it) for the next batch
        for (auto& ev : *r.requests) asm_.give_back(std::move(ev.f.bytes));
        r.requests->clear();
        spare_batch_ = std::move(r.requests);
      }
    } else
      caf::anon_send(requests_, inbound_atom::value, r.requests, owner_, connection_ptr(shared_from_this()));
  }
  if (out.fail && out.clean_eof && !asm_.failed()) caf::anon_send(owner_, eof_atom::value, out.fail);  // answer, then close
  else if (r.fatal) caf::anon_send(owner_, ioerr_atom::value, r.fatal);
  else if (out.fail) caf::anon_send(owner_, ioerr_atom::value, out.fail);
  else if (r.overflow) caf::anon_send(owner_, eof_atom::value, r.overflow);
  if (fatal) stop();
}

}  // namespace vfu
