#include "net/control_api.h"

#include <charconv>
#include <optional>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <simdjson.h>

#include "stages/record_json.h"

namespace mailrail::net {

ControlApi::ControlApi(ControlService* service, ControlApiConfig config)
    : service_(service), config_(std::move(config)) {}

void ControlApi::AddMetrics(std::function<void(std::string&)> source) { metrics_.push_back(std::move(source)); }

bool ControlApi::Authorized(const HttpRequest& request) const {
  if (config_.bearer_token.empty()) return true;
  const std::string_view header = request.Header("authorization");
  constexpr std::string_view kPrefix = "Bearer ";
  if (header.size() != kPrefix.size() + config_.bearer_token.size() || !header.starts_with(kPrefix)) return false;
  return CRYPTO_memcmp(header.data() + kPrefix.size(), config_.bearer_token.data(), config_.bearer_token.size()) == 0;
}

void ControlApi::Answer(Responder responder, const ControlReply& reply) const {
  responder.Send(HttpResponse::Json(reply.status, reply.json));
}

namespace {

HttpResponse Unauthorized() {
  HttpResponse r = HttpResponse::Json(401, "{\"detail\":\"missing or invalid bearer token\"}");
  r.headers.push_back({"WWW-Authenticate", "Bearer"});
  return r;
}

HttpResponse Invalid(std::string_view reason) {
  std::string body = "{\"detail\":";
  stages::AppendJsonString(reason, body);
  body += "}";
  return HttpResponse::Json(400, std::move(body));
}

// Parses an optional JSON object body. Empty body: an empty object.
bool ParseObject(simdjson::dom::parser& parser, const std::string& body, simdjson::dom::object& out) {
  std::string_view text(body);
  while (!text.empty() && (text.front() == ' ' || text.front() == '\n' || text.front() == '\r' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  if (text.empty()) text = "{}";
  return !parser.parse(text.data(), text.size()).get(out);
}

}  // namespace

void ControlApi::Install(HttpServer& server) {
  auto parser = std::make_shared<simdjson::dom::parser>();
  server.Route("POST", "/session/start", [this, parser](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    simdjson::dom::object body;
    if (!ParseObject(*parser, request.body, body)) return responder.Send(Invalid("body must be a JSON object"));
    SessionStartRequest start;
    std::string_view mode;
    if (auto field = body["polling_mode"]; !field.error() && !field.is_null()) {
      if (field.get(mode)) return responder.Send(Invalid("polling_mode must be a string"));
      if (mode != "scheduled" && mode != "manual") {
        return responder.Send(Invalid("polling_mode must be \"scheduled\" or \"manual\""));
      }
      start.polling_mode = std::string(mode);
    }
    if (auto field = body["polling_interval"]; !field.error() && !field.is_null()) {
      std::int64_t interval;
      if (field.get(interval) || interval <= 0 || interval > 86400) {
        return responder.Send(Invalid("polling_interval must be an integer number of seconds in [1, 86400]"));
      }
      start.polling_interval_seconds = static_cast<int>(interval);
    }
    if (auto field = body["enable_webhook"]; !field.error() && !field.is_null()) {
      bool enable;
      if (field.get(enable)) return responder.Send(Invalid("enable_webhook must be a boolean"));
      start.enable_webhook = enable;
    }
    Answer(responder, service_->StartSession(start));
  });
  server.Route("POST", "/session/stop", [this, parser](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    simdjson::dom::object body;
    if (!ParseObject(*parser, request.body, body)) return responder.Send(Invalid("body must be a JSON object"));
    std::string_view reason = "user_requested";
    if (auto field = body["reason"]; !field.error() && !field.is_null()) {
      if (field.get(reason)) return responder.Send(Invalid("reason must be a string"));
    }
    Answer(responder, service_->StopSession(reason));
  });
  server.Route("GET", "/session/status", [this](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    Answer(responder, service_->SessionStatus());
  });
  server.Route("POST", "/polling/trigger", [this](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    Answer(responder, service_->TriggerPolling());
  });
  server.Route("POST", "/rules/reload", [this, loop = server.loop()](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    service_->ReloadRules([this, loop, responder](ControlReply reply) {
      loop->Post([this, responder, reply = std::move(reply)] { Answer(responder, reply); });
    });
  });
  // Sync jobs: /api/v1/email-sync/{start,status,history}/{user_id} and /api/v1/email-sync/stats.
  // The user id is the rest of the path, percent-decoded.
  auto user_of = [](const HttpRequest& request, std::string_view prefix) -> std::optional<std::string> {
    auto user = UrlDecode(request.path().substr(prefix.size()));
    if (!user || user->empty() || user->find_first_of(std::string_view("/\t\r\n\0", 5)) != std::string::npos) {
      return std::nullopt;
    }
    return user;
  };
  // An optional integer query parameter in [min, max]; nullopt when present but invalid.
  auto bounded = [](const HttpRequest& request, std::string_view name, long fallback, long min,
                    long max) -> std::optional<long> {
    auto text = QueryParam(request.query(), name);
    if (!text) return fallback;
    long value = 0;
    auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
    if (ec != std::errc() || ptr != text->data() + text->size() || value < min || value > max) return std::nullopt;
    return value;
  };
  constexpr std::string_view kStart = "/api/v1/email-sync/start/";
  constexpr std::string_view kStatus = "/api/v1/email-sync/status/";
  constexpr std::string_view kHistory = "/api/v1/email-sync/history/";
  server.Route("POST", std::string(kStart) + "*", [this, user_of, bounded, kStart](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    auto user = user_of(request, kStart);
    if (!user) return responder.Send(Invalid("the path must end with a user id"));
    auto months = bounded(request, "months", 6, 1, 120);
    if (!months) return responder.Send(Invalid("months must be an integer between 1 and 120"));
    Answer(responder, service_->StartSyncJob(*user, static_cast<unsigned>(*months)));
  });
  server.Route("GET", std::string(kStatus) + "*", [this, user_of, kStatus](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    auto user = user_of(request, kStatus);
    if (!user) return responder.Send(Invalid("the path must end with a user id"));
    Answer(responder, service_->SyncJobStatus(*user));
  });
  server.Route("GET", std::string(kHistory) + "*", [this, user_of, bounded, kHistory](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    auto user = user_of(request, kHistory);
    if (!user) return responder.Send(Invalid("the path must end with a user id"));
    auto limit = bounded(request, "limit", 10, 1, 1000);
    if (!limit) return responder.Send(Invalid("limit must be an integer between 1 and 1000"));
    Answer(responder, service_->SyncJobHistory(*user, static_cast<std::size_t>(*limit)));
  });
  server.Route("GET", "/api/v1/email-sync/stats", [this](HttpRequest& request, Responder responder) {
    if (!Authorized(request)) return responder.Send(Unauthorized());
    Answer(responder, service_->SyncJobStats());
  });
  // Health and metrics stay open: load balancers and Prometheus scrape them without a token.
  server.Route("GET", "/health", [this](HttpRequest&, Responder responder) {
    const HealthReport report = service_->Health();
    if (report.reasons.empty()) return responder.Send(HttpResponse::Json(200, "{\"status\":\"ok\"}"));
    std::string body = "{\"status\":\"unhealthy\",\"reasons\":[";
    for (std::size_t i = 0; i < report.reasons.size(); ++i) {
      if (i > 0) body += ',';
      stages::AppendJsonString(report.reasons[i], body);
    }
    body += "]}";
    responder.Send(HttpResponse::Json(503, std::move(body)));
  });
  server.Route("GET", "/metrics", [this](HttpRequest&, Responder responder) {
    std::string text = service_->Metrics();
    for (const auto& source : metrics_) source(text);
    HttpResponse response;
    response.status = 200;
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    response.body = std::move(text);
    responder.Send(std::move(response));
  });
}

void AppendHttpServerMetrics(std::string& out, std::string_view server, const HttpServerStats& s) {
  auto counter = [&](std::string_view name, std::string_view help, std::uint64_t value, std::string_view extra = {}) {
    fmt::format_to(std::back_inserter(out), "# HELP mailrail_http_{} {}\n# TYPE mailrail_http_{} counter\n", name, help, name);
    fmt::format_to(std::back_inserter(out), "mailrail_http_{}{{server=\"{}\"{}}} {}\n", name, server, extra, value);
  };
  counter("connections_accepted_total", "Accepted connections.", s.connections_accepted.value());
  counter("connections_rejected_total", "Connections refused over the connection limit.", s.connections_rejected.value());
  fmt::format_to(std::back_inserter(out),
                 "# HELP mailrail_http_connections_open Open connections.\n# TYPE mailrail_http_connections_open gauge\n"
                 "mailrail_http_connections_open{{server=\"{}\"}} {}\n",
                 server, s.connections_open.value());
  counter("requests_total", "Complete requests dispatched to a handler.", s.requests.value());
  fmt::format_to(std::back_inserter(out),
                 "# HELP mailrail_http_responses_total Responses by status class.\n# TYPE mailrail_http_responses_total counter\n");
  for (auto [cls, value] : {std::pair<const char*, std::uint64_t>{"2xx", s.responses_2xx.value()},
                            {"4xx", s.responses_4xx.value()},
                            {"5xx", s.responses_5xx.value()},
                            {"other", s.responses_other.value()}}) {
    fmt::format_to(std::back_inserter(out), "mailrail_http_responses_total{{server=\"{}\",class=\"{}\"}} {}\n", server, cls, value);
  }
  counter("bad_requests_total", "Requests rejected by the HTTP parser (400).", s.bad_requests.value());
  counter("header_too_large_total", "Requests over the header limit (431).", s.header_too_large.value());
  counter("body_too_large_total", "Requests over the body limit (413).", s.body_too_large.value());
  counter("request_timeouts_total", "Requests not completed in time (408).", s.request_timeouts.value());
  counter("idle_closes_total", "Keep-alive connections closed when idle.", s.idle_closes.value());
  counter("tls_failures_total", "TLS handshakes or records that failed.", s.tls_failures.value());
}

}  // namespace mailrail::net
