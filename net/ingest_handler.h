#pragma once
// IngestHandler: the HTTP ingest routes. It turns request bodies into pooled Messages, pushes
// them to the ingest channel (towards the WAL) and answers only when the WAL says they are
// durable, so a 2xx always means "accepted" in the sense of BRIEF.md.
//
//   POST /ingest          message/rfc822 (one raw message) or application/json (one Graph message
//                         object, or an array of them: one Message per element) -> 202
//                         {"lsns":[...]} after every message is durable. With the header
//                         X-Mailrail-Redrive (sent by `mailrail quarantine redrive`) the messages
//                         are re-drives from quarantine: dedup lets them through.
//   POST /webhook/graph   ?validationToken=... -> 200 text/plain echoing the decoded token.
//                         Otherwise a Graph notification collection {"value":[...]}: a
//                         clientState that does not match the configured secret is discarded and
//                         counted; lifecycle notifications (reauthorizationRequired, missed,
//                         subscriptionRemoved) are counted (and handed to the Graph source when
//                         one is configured); a valid change notification for a mailbox of the
//                         Graph source becomes a delta round of that mailbox (answered at once:
//                         the source's delta checkpoint is what is durable); every other valid
//                         change notification becomes a Message of kind kGraphNotification (a
//                         durable fetch request) -> 202 after they are durable.
// Backpressure: when the MessagePool has no slot or byte budget left, or the channel has no room,
// the answer is 503 with Retry-After and nothing is enqueued.
//
// Threading: Install() and the handlers run on the server's loop thread, which is the only
//   producer of `channel` (an SPSC ring). OnDurable is called by the WAL thread: it appends the
//   acks under a mutex and posts one drain task to the loop when the queue was empty; the loop
//   answers the requests whose messages are all durable.
// Ownership: pool, channel and loop outlive the handler, and the handler outlives every message
//   it enqueued (the WAL calls OnDurable on it). Messages pushed to the channel belong to the
//   pipeline from then on; the handler keeps only the ack token.
// Allocation: request state lives in a slab of reusable slots; an rfc822 body moves into the
//   Message without copying (string swap); JSON elements are copied once into their Message.

#include <simdjson.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "engine/channel.h"
#include "net/counter.h"
#include "net/event_loop.h"
#include "net/http_server.h"
#include "stages/message.h"

namespace mailrail::net {

// GraphNotificationTarget: where valid Graph notifications go when a Graph source is configured
// (GraphSource). Threading: called on the loop thread that runs the handler, which is the
// source's loop too, so no hand-over is needed.
class GraphNotificationTarget {
 public:
  // A change notification; true when it names a known mailbox and was turned into a delta round
  // (the handler then enqueues nothing: the source's delta checkpoint is the durable state).
  virtual bool OnGraphChange(std::string_view resource, std::string_view subscription_id) = 0;
  // A lifecycle notification (after the handler counted it).
  virtual void OnGraphLifecycle(std::string_view subscription_id, std::string_view event) = 0;

 protected:
  ~GraphNotificationTarget() = default;
};

struct IngestConfig {
  int retry_after_seconds = 1;
  // Graph subscriptions' clientState secret; empty disables the check (not recommended).
  std::string graph_client_state;
  std::size_t max_messages_per_request = 1000;  // JSON arrays beyond this get 413
  // Null: change notifications become kGraphNotification Messages (quarantined by the parse stage
  // as graph_notification_without_poller). Set: see GraphNotificationTarget. Outlives the handler.
  GraphNotificationTarget* graph_target = nullptr;
};

struct IngestStats {
  Counter requests;
  Counter messages_enqueued;
  Counter messages_durable;
  Counter backpressure_rejections;   // 503
  Counter bad_requests;              // malformed JSON, wrong content type, empty body
  Counter graph_validations;
  Counter graph_notifications;       // valid change notifications (fetch requests)
  Counter graph_client_state_mismatches;
  Counter graph_lifecycle_reauthorization_required;
  Counter graph_lifecycle_missed;
  Counter graph_lifecycle_subscription_removed;
  Counter graph_lifecycle_other;
};

class IngestHandler final : public stages::DurableAckSink {
 public:
  IngestHandler(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
                IngestConfig config);
  IngestHandler(const IngestHandler&) = delete;
  IngestHandler& operator=(const IngestHandler&) = delete;

  void Install(HttpServer& server);
  void OnDurable(std::span<const stages::DurableAck> acks) override;

  const IngestStats& stats() const { return stats_; }
  // Requests waiting for durability (loop thread).
  std::size_t pending_requests() const { return live_pending_; }

 private:
  struct Pending {
    Responder responder;
    std::uint32_t generation = 0;
    std::uint32_t remaining = 0;
    bool in_use = false;
    std::vector<std::uint64_t> lsns;
  };

  void HandleIngest(HttpRequest& request, Responder responder);
  void HandleGraph(HttpRequest& request, Responder responder);
  // Acquires one Message per body (or per view), fills it and pushes all of them; answers 503
  // (and enqueues nothing) when the pool or the channel has no room.
  struct Item {
    std::string_view raw;        // one JSON object (array element or notification)
    std::string_view source_id;  // Graph notifications: subscriptionId
    std::string_view position;   // Graph notifications: resource
  };
  void Enqueue(HttpRequest& request, Responder responder, stages::InputKind kind, std::vector<Item>* items);
  // Pushes held_ to the channel in order (end of each loop iteration); what does not fit stays
  // in held_ and is retried.
  void PushHeld();
  void DrainAcks();
  std::uint64_t AllocatePending(Responder responder, std::uint32_t count);

  EventLoop* loop_;
  stages::MessagePool* pool_;
  engine::Channel<stages::Message*>* channel_;
  IngestConfig config_;
  IngestStats stats_;

  simdjson::ondemand::parser parser_;          // /ingest JSON (hot path, no DOM)
  simdjson::dom::parser dom_parser_;          // Graph notification collections (small)
  std::vector<Item> items_;                   // scratch: one request's items
  std::vector<std::string> graph_raw_;        // scratch: minified notifications
  std::vector<stages::Message*> batch_;       // scratch: messages of one request
  std::vector<stages::Message*> held_;        // filled, waiting for the end-of-batch push
  bool retry_armed_ = false;

  std::vector<Pending> slots_;
  std::vector<std::uint32_t> free_slots_;
  std::size_t live_pending_ = 0;

  std::mutex acks_mutex_;
  std::vector<stages::DurableAck> acks_;          // guarded by acks_mutex_
  std::vector<stages::DurableAck> draining_acks_; // loop thread
};

// Prometheus text for the ingest counters (for ControlApi::AddMetrics).
void AppendIngestMetrics(std::string& out, const IngestStats& stats);

}  // namespace mailrail::net
