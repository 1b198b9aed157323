#include "net/ingest_handler.h"

#include <fmt/format.h>

#include <chrono>

#include "engine/base/check.h"
#include "engine/stage.h"

namespace mailrail::net {
namespace {

std::string_view MediaType(std::string_view content_type) {
  const std::size_t semi = content_type.find(';');
  std::string_view type = content_type.substr(0, semi);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  return type;
}

HttpResponse BadRequest(std::string reason) { return HttpResponse::Text(400, std::move(reason) + "\n"); }

}  // namespace

IngestHandler::IngestHandler(EventLoop* loop, stages::MessagePool* pool,
                             engine::Channel<stages::Message*>* channel, IngestConfig config)
    : loop_(loop), pool_(pool), channel_(channel), config_(std::move(config)) {}

void IngestHandler::Install(HttpServer& server) {
  // Messages of every request completed in one loop iteration enter the ring with one push (one
  // index publish, at most one consumer wake-up).
  loop_->AddBatchEndHook([this] {
    if (!held_.empty()) PushHeld();
  });
  server.Route("POST", "/ingest", [this](HttpRequest& request, Responder responder) {
    HandleIngest(request, responder);
  });
  server.Route("POST", "/webhook/graph", [this](HttpRequest& request, Responder responder) {
    HandleGraph(request, responder);
  });
}

void IngestHandler::HandleIngest(HttpRequest& request, Responder responder) {
  stats_.requests.Add();
  const std::string_view type = MediaType(request.Header("content-type"));
  if (request.body.empty()) {
    stats_.bad_requests.Add();
    responder.Send(BadRequest("empty body"));
    return;
  }
  if (EqualsIgnoreCase(type, "message/rfc822")) {
    Enqueue(request, responder, stages::InputKind::kRfc822, nullptr);
    return;
  }
  if (!EqualsIgnoreCase(type, "application/json")) {
    stats_.bad_requests.Add();
    responder.Send(HttpResponse::Text(415, "content type must be message/rfc822 or application/json\n"));
    return;
  }
  // One Graph message object, or an array of them.
  if (request.body.capacity() < request.body.size() + simdjson::SIMDJSON_PADDING) {
    request.body.reserve(request.body.size() + simdjson::SIMDJSON_PADDING);
  }
  items_.clear();
  simdjson::ondemand::document doc;
  simdjson::ondemand::json_type json_type;
  if (parser_.iterate(request.body.data(), request.body.size(), request.body.capacity()).get(doc) ||
      doc.type().get(json_type)) {
    stats_.bad_requests.Add();
    responder.Send(BadRequest("malformed JSON"));
    return;
  }
  if (json_type == simdjson::ondemand::json_type::object) {
    simdjson::ondemand::object object;
    std::string_view raw;
    if (doc.get_object().get(object) || object.raw_json().get(raw)) {
      stats_.bad_requests.Add();
      responder.Send(BadRequest("malformed JSON object"));
      return;
    }
    Enqueue(request, responder, stages::InputKind::kGraphJson, nullptr);
    return;
  }
  if (json_type != simdjson::ondemand::json_type::array) {
    stats_.bad_requests.Add();
    responder.Send(BadRequest("JSON body must be a message object or an array of them"));
    return;
  }
  simdjson::ondemand::array array;
  if (doc.get_array().get(array)) {
    stats_.bad_requests.Add();
    responder.Send(BadRequest("malformed JSON array"));
    return;
  }
  for (auto element : array) {
    simdjson::ondemand::object object;
    std::string_view raw;
    if (element.get_object().get(object) || object.raw_json().get(raw)) {
      stats_.bad_requests.Add();
      responder.Send(BadRequest("array elements must be JSON message objects"));
      return;
    }
    while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\n' || raw.back() == '\r' || raw.back() == '\t')) {
      raw.remove_suffix(1);  // raw_json() keeps the whitespace before the next separator
    }
    items_.push_back({raw, {}, {}});
    if (items_.size() > config_.max_messages_per_request) {
      stats_.bad_requests.Add();
      responder.Send(HttpResponse::Text(413, "too many messages in one request\n"));
      return;
    }
  }
  if (items_.empty()) {
    responder.Send(HttpResponse::Json(202, "{\"lsns\":[]}"));
    return;
  }
  Enqueue(request, responder, stages::InputKind::kGraphJson, &items_);
}

void IngestHandler::HandleGraph(HttpRequest& request, Responder responder) {
  stats_.requests.Add();
  if (auto token = QueryParam(request.query(), "validationToken"); token.has_value()) {
    stats_.graph_validations.Add();
    responder.Send(HttpResponse::Text(200, std::move(*token)));
    return;
  }
  simdjson::dom::element root;
  simdjson::dom::array notifications;
  if (dom_parser_.parse(request.body).get(root) || root["value"].get_array().get(notifications)) {
    stats_.bad_requests.Add();
    responder.Send(BadRequest("expected a Graph notification collection {\"value\":[...]}"));
    return;
  }
  items_.clear();
  graph_raw_.clear();
  std::size_t raw_bytes = 0;
  for (simdjson::dom::element n : notifications) {
    if (!n.is_object()) {
      stats_.bad_requests.Add();
      responder.Send(BadRequest("notifications must be JSON objects"));
      return;
    }
    std::string_view client_state;
    if (n["clientState"].get(client_state)) client_state = {};
    if (!config_.graph_client_state.empty() && client_state != config_.graph_client_state) {
      stats_.graph_client_state_mismatches.Add();
      continue;
    }
    std::string_view lifecycle;
    if (!n["lifecycleEvent"].get(lifecycle)) {
      if (lifecycle == "reauthorizationRequired") {
        stats_.graph_lifecycle_reauthorization_required.Add();
      } else if (lifecycle == "missed") {
        stats_.graph_lifecycle_missed.Add();
      } else if (lifecycle == "subscriptionRemoved") {
        stats_.graph_lifecycle_subscription_removed.Add();
      } else {
        stats_.graph_lifecycle_other.Add();
      }
      std::string_view subscription;
      if (n["subscriptionId"].get(subscription)) subscription = {};
      if (config_.graph_target != nullptr) config_.graph_target->OnGraphLifecycle(subscription, lifecycle);
      continue;
    }
    std::string_view subscription, resource;
    if (n["subscriptionId"].get(subscription) || n["resource"].get(resource)) {
      stats_.bad_requests.Add();
      responder.Send(BadRequest("change notification without subscriptionId or resource"));
      return;
    }
    if (config_.graph_target != nullptr && config_.graph_target->OnGraphChange(resource, subscription)) {
      stats_.graph_notifications.Add();
      continue;
    }
    graph_raw_.push_back(simdjson::minify(n));
    raw_bytes += graph_raw_.back().size();
    items_.push_back({{}, subscription, resource});
  }
  (void)raw_bytes;
  for (std::size_t i = 0; i < items_.size(); ++i) items_[i].raw = graph_raw_[i];
  stats_.graph_notifications.Add(items_.size());  // those the Graph source took are counted above
  if (items_.empty()) {
    responder.Send(HttpResponse::Json(202, "{\"lsns\":[]}"));  // nothing to fetch; Graph wants a 2xx
    return;
  }
  Enqueue(request, responder, stages::InputKind::kGraphNotification, &items_);
}

void IngestHandler::Enqueue(HttpRequest& request, Responder responder, stages::InputKind kind,
                            std::vector<Item>* items) {
  const std::size_t count = items == nullptr ? 1 : items->size();
  const std::size_t free_slots = channel_->capacity() - channel_->size_approx();
  if (channel_->is_closed() || free_slots < held_.size() + count) {
    stats_.backpressure_rejections.Add();
    responder.Send(HttpResponse::Unavailable(config_.retry_after_seconds, "ingest queue full\n"));
    return;
  }
  batch_.clear();
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t bytes = items == nullptr ? request.body.size() : (*items)[i].raw.size();
    stages::Message* message = pool_->TryAcquire(bytes);
    if (message == nullptr) {
      for (stages::Message* m : batch_) pool_->Release(m);
      batch_.clear();
      stats_.backpressure_rejections.Add();
      responder.Send(HttpResponse::Unavailable(config_.retry_after_seconds, "message budget exhausted\n"));
      return;
    }
    batch_.push_back(message);
  }
  const std::uint64_t token = AllocatePending(responder, static_cast<std::uint32_t>(count));
  const auto wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  const std::int64_t steady_ns = engine::NowNs();
  for (std::size_t i = 0; i < count; ++i) {
    stages::Message* m = batch_[i];
    if (items == nullptr) {
      m->raw.swap(request.body);  // the connection gets the slot's old buffer back: no copy
    } else {
      m->raw.assign((*items)[i].raw);
    }
    m->kind = kind;
    if (kind == stages::InputKind::kGraphNotification) {
      m->source.kind = stages::SourceKind::kGraph;
      m->source.id.assign((*items)[i].source_id);
      m->source.position.assign((*items)[i].position);
    } else {
      m->source.kind = stages::SourceKind::kWebhook;
      const bool redrive = request.HasHeader("x-mailrail-redrive");
      m->source.id.assign(redrive ? stages::kRedriveSourceId : "http-ingest");
      if (redrive) m->source.position.assign(request.Header("x-mailrail-redrive"));  // the quarantine id
    }
    m->ack_sink = this;
    m->ack_token = token;
    m->received_at_ms = wall_ms;
    m->accepted_ns = steady_ns;
  }
  held_.insert(held_.end(), batch_.begin(), batch_.end());
  batch_.clear();
  stats_.messages_enqueued.Add(count);
}

void IngestHandler::PushHeld() {
  const std::size_t pushed = channel_->PushBatch(std::span<stages::Message* const>(held_));
  held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(pushed));
  if (!held_.empty() && !retry_armed_) {
    // The ring was fuller than size_approx said: keep the order and retry shortly.
    retry_armed_ = true;
    loop_->RunAfter(std::chrono::milliseconds(1), [this] {
      retry_armed_ = false;
      if (!held_.empty()) PushHeld();
    });
  }
}

std::uint64_t IngestHandler::AllocatePending(Responder responder, std::uint32_t count) {
  std::uint32_t index;
  if (free_slots_.empty()) {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  } else {
    index = free_slots_.back();
    free_slots_.pop_back();
  }
  Pending& p = slots_[index];
  p.in_use = true;
  ++p.generation;
  p.remaining = count;
  p.responder = responder;
  p.lsns.clear();
  ++live_pending_;
  return (static_cast<std::uint64_t>(p.generation) << 32) | index;
}

void IngestHandler::OnDurable(std::span<const stages::DurableAck> acks) {
  bool was_empty;
  {
    std::lock_guard lock(acks_mutex_);
    was_empty = acks_.empty();
    acks_.insert(acks_.end(), acks.begin(), acks.end());
  }
  if (was_empty) loop_->Post([this] { DrainAcks(); });
}

void IngestHandler::DrainAcks() {
  {
    std::lock_guard lock(acks_mutex_);
    draining_acks_.swap(acks_);
  }
  for (const stages::DurableAck& ack : draining_acks_) {
    const std::uint32_t index = static_cast<std::uint32_t>(ack.token);
    const std::uint32_t generation = static_cast<std::uint32_t>(ack.token >> 32);
    MR_CHECK(index < slots_.size()) << "durable ack for unknown token " << ack.token;
    Pending& p = slots_[index];
    MR_CHECK(p.in_use && p.generation == generation && p.remaining > 0)
        << "durable ack for a request that is not waiting: token=" << ack.token;
    stats_.messages_durable.Add();
    p.lsns.push_back(ack.lsn);
    if (--p.remaining > 0) continue;
    std::string body = "{\"lsns\":[";
    for (std::size_t i = 0; i < p.lsns.size(); ++i) {
      if (i > 0) body += ',';
      fmt::format_to(std::back_inserter(body), "{}", p.lsns[i]);
    }
    body += "]}";
    p.responder.Send(HttpResponse::Json(202, std::move(body)));
    p.in_use = false;
    free_slots_.push_back(index);
    --live_pending_;
  }
  draining_acks_.clear();
}

void AppendIngestMetrics(std::string& out, const IngestStats& s) {
  auto counter = [&](std::string_view name, std::string_view help, std::uint64_t value) {
    fmt::format_to(std::back_inserter(out), "# HELP mailrail_ingest_{0} {1}\n# TYPE mailrail_ingest_{0} counter\nmailrail_ingest_{0} {2}\n",
                   name, help, value);
  };
  counter("requests_total", "Requests to /ingest and /webhook/graph.", s.requests.value());
  counter("messages_enqueued_total", "Messages handed to the WAL.", s.messages_enqueued.value());
  counter("messages_durable_total", "Messages reported durable by the WAL.", s.messages_durable.value());
  counter("backpressure_rejections_total", "Requests answered 503 for lack of room.", s.backpressure_rejections.value());
  counter("bad_requests_total", "Requests with an unusable body or content type.", s.bad_requests.value());
  counter("graph_validations_total", "Graph subscription validation handshakes.", s.graph_validations.value());
  counter("graph_notifications_total", "Valid Graph change notifications (fetch requests).", s.graph_notifications.value());
  counter("graph_client_state_mismatches_total", "Graph notifications discarded for a wrong clientState.",
          s.graph_client_state_mismatches.value());
  out += "# HELP mailrail_ingest_graph_lifecycle_total Graph lifecycle notifications by event.\n"
         "# TYPE mailrail_ingest_graph_lifecycle_total counter\n";
  fmt::format_to(std::back_inserter(out),
                 "mailrail_ingest_graph_lifecycle_total{{event=\"reauthorizationRequired\"}} {}\n"
                 "mailrail_ingest_graph_lifecycle_total{{event=\"missed\"}} {}\n"
                 "mailrail_ingest_graph_lifecycle_total{{event=\"subscriptionRemoved\"}} {}\n"
                 "mailrail_ingest_graph_lifecycle_total{{event=\"other\"}} {}\n",
                 s.graph_lifecycle_reauthorization_required.value(), s.graph_lifecycle_missed.value(),
                 s.graph_lifecycle_subscription_removed.value(), s.graph_lifecycle_other.value());
}

}  // namespace mailrail::net
