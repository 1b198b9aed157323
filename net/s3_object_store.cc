#include "net/s3_object_store.h"

#include <algorithm>
#include <chrono>

#include <fmt/core.h>

#include "engine/base/counters.h"

namespace mailrail::net {
namespace {

constexpr std::string_view kEmptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);

// The text of the first <tag>...</tag> in an S3 XML body ("" when absent).
std::string XmlValue(std::string_view body, std::string_view tag) {
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  const std::size_t begin = body.find(open);
  if (begin == std::string_view::npos) return {};
  const std::size_t from = begin + open.size();
  const std::size_t end = body.find(close, from);
  if (end == std::string_view::npos) return {};
  return std::string(body.substr(from, end - from));
}

}  // namespace

enum class S3Step : std::uint8_t { kHead, kPut, kCreate, kPart, kComplete, kAbort };

struct S3ObjectStore::Upload {
  std::uint64_t token = 0;
  std::string key;
  std::string path;  // /<bucket>/<encoded key>
  std::string sha256_hex;
  std::string_view bytes;
  S3Step step = S3Step::kHead;
  std::size_t attempt = 0;  // of the current request
  std::string upload_id;
  std::size_t part = 0;  // 0-based part being sent
  std::vector<std::string> etags;
  std::string failure;  // set before an abort: the error reported once the abort is done
};

base::Result<std::unique_ptr<S3ObjectStore>> S3ObjectStore::Create(S3StoreConfig config) {
  if (config.bucket.empty()) return base::MakeError("attachments.s3", "bucket is required");
  if (config.part_size == 0 || config.max_attempts == 0 || config.max_in_flight == 0) {
    return base::MakeError("attachments.s3", "part_size, max_attempts and max_in_flight must be at least 1");
  }
  std::unique_ptr<S3ObjectStore> store(new S3ObjectStore(std::move(config)));
  auto loop = EventLoop::Create({.ring_entries = 256, .buffer_count = 64, .buffer_size = 16384});
  if (!loop) return loop.error();
  store->loop_ = std::move(loop).value();
  HttpClientConfig http;
  http.base_url = store->config_.endpoint;
  http.max_connections = store->config_.max_in_flight;
  http.request_timeout = store->config_.request_timeout;
  http.verify_peer = store->config_.verify_peer;
  http.ca_file = store->config_.ca_file;
  auto client = HttpClient::Create(store->loop_.get(), http);
  if (!client) return client.error();
  store->client_ = std::move(client).value();
  if (!store->client_->url().prefix.empty()) {
    return base::MakeError("attachments.s3", "endpoint must not have a path (the bucket goes into the path)");
  }
  store->loop_thread_ = std::thread([loop = store->loop_.get()] { loop->Run(); });
  return store;
}

S3ObjectStore::~S3ObjectStore() {
  if (!loop_thread_.joinable()) return;
  // Requests still queued or in flight fail with "closed" (their messages are re-fed from the
  // WAL next start); bodies are copies, so nothing reads the stage's buffers after this.
  loop_->Post([this] {
    stopping_ = true;
    client_->Shutdown();
    loop_->Stop();
  });
  loop_thread_.join();
  for (Upload* u : uploads_) delete u;  // waiting for a retry timer that will not fire
}

std::string S3ObjectStore::Reference(const storage::ObjectDigest& sha256) const {
  return "s3://" + config_.bucket + "/" + KeyOf(sha256);
}

bool S3ObjectStore::TrySubmit(const storage::ObjectWrite& write) {
  std::string hex = storage::DigestHex(write.sha256);
  if (auto it = joined_.find(hex); it != joined_.end()) {
    it->second.push_back(write.token);
    ++in_flight_tokens_;
    base::BumpSingleWriter(counters_.joined_in_flight);
    return true;
  }
  if (in_flight_objects_ >= config_.max_in_flight) return false;
  ++in_flight_objects_;
  ++in_flight_tokens_;
  joined_[hex];
  hex_of_token_[write.token] = hex;
  auto upload = std::make_unique<Upload>();
  upload->token = write.token;
  upload->key = config_.prefix + hex;
  upload->path = "/" + S3UriEncode(config_.bucket, false) + "/" + S3UriEncode(upload->key, true);
  upload->sha256_hex = std::move(hex);
  upload->bytes = write.bytes;
  loop_->Post([this, u = upload.release()] { Begin(u); });
  return true;
}

void S3ObjectStore::Poll(std::vector<storage::ObjectWriteResult>& out) {
  {
    std::lock_guard lock(done_mutex_);
    taken_.swap(done_);
  }
  for (storage::ObjectWriteResult& r : taken_) {
    auto hex = hex_of_token_.find(r.token);
    MR_CHECK(hex != hex_of_token_.end()) << "s3 store: result for unknown token " << r.token;
    auto joined = joined_.find(hex->second);
    for (std::uint64_t token : joined->second) out.push_back(storage::ObjectWriteResult{token, r.outcome, r.error});
    in_flight_tokens_ -= joined->second.size() + 1;
    joined_.erase(joined);
    hex_of_token_.erase(hex);
    --in_flight_objects_;
    out.push_back(std::move(r));
  }
  taken_.clear();
}

void S3ObjectStore::Begin(Upload* u) {
  uploads_.insert(u);
  u->step = S3Step::kHead;
  u->attempt = 0;
  Send(u);
}

void S3ObjectStore::Send(Upload* u) {
  ClientRequest request;
  std::vector<std::pair<std::string, std::string>> query;
  std::string payload_hash(kEmptySha256);
  switch (u->step) {
    case S3Step::kHead: request.method = "HEAD"; break;
    case S3Step::kPut:
      request.method = "PUT";
      request.body.assign(u->bytes);
      payload_hash = u->sha256_hex;  // the content address is the payload hash
      break;
    case S3Step::kCreate:
      request.method = "POST";
      query.emplace_back("uploads", "");
      break;
    case S3Step::kPart: {
      request.method = "PUT";
      const std::size_t offset = u->part * config_.part_size;
      request.body.assign(u->bytes.substr(offset, config_.part_size));
      payload_hash = Sha256Hex(request.body);
      query.emplace_back("partNumber", std::to_string(u->part + 1));
      query.emplace_back("uploadId", u->upload_id);
      break;
    }
    case S3Step::kComplete: {
      request.method = "POST";
      request.body = "<CompleteMultipartUpload>";
      for (std::size_t i = 0; i < u->etags.size(); ++i) {
        request.body += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, u->etags[i]);
      }
      request.body += "</CompleteMultipartUpload>";
      payload_hash = Sha256Hex(request.body);
      query.emplace_back("uploadId", u->upload_id);
      break;
    }
    case S3Step::kAbort:
      request.method = "DELETE";
      query.emplace_back("uploadId", u->upload_id);
      break;
  }
  const ParsedUrl& url = client_->url();
  std::string host = url.host;
  if ((url.tls && url.port != 443) || (!url.tls && url.port != 80)) host += ":" + std::to_string(url.port);
  const std::string amz_date =
      AmzDate(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                  .count());
  SigV4Request signing{request.method, u->path, query,
                       {{"host", host}, {"x-amz-content-sha256", payload_hash}, {"x-amz-date", amz_date}},
                       payload_hash};
  const std::string authorization = Authorization(signing, config_.credentials, config_.region, "s3", amz_date);
  request.path = u->path;
  if (!query.empty()) {
    request.path += '?';
    for (std::size_t i = 0; i < query.size(); ++i) {
      if (i > 0) request.path += '&';
      request.path += S3UriEncode(query[i].first, false);
      if (!query[i].second.empty()) request.path += "=" + S3UriEncode(query[i].second, false);
    }
  }
  request.headers = {{"x-amz-content-sha256", payload_hash}, {"x-amz-date", amz_date},
                     {"authorization", authorization}};
  base::BumpSingleWriter(counters_.requests);
  client_->Send(std::move(request), [this, u](base::Result<ClientResponse> response) {
    OnResponse(u, std::move(response));
  });
}

void S3ObjectStore::OnResponse(Upload* u, base::Result<ClientResponse> response) {
  static constexpr const char* kStepNames[] = {"HEAD", "PUT", "CreateMultipartUpload", "UploadPart",
                                               "CompleteMultipartUpload", "AbortMultipartUpload"};
  const char* step = kStepNames[static_cast<int>(u->step)];
  if (stopping_) {
    Finish(u, storage::ObjectWriteOutcome::kFailed, "store shut down");
    return;
  }
  if (!response) {
    Retry(u, fmt::format("{} {}: {}", step, u->key, response.error().message));
    return;
  }
  const ClientResponse& r = *response;
  const bool error_in_200 = u->step == S3Step::kComplete && r.status == 200 && r.body.find("<Error>") != std::string::npos;
  if (r.status >= 500 || r.status == 429 || error_in_200) {
    const std::string code = XmlValue(r.body, "Code");
    Retry(u, fmt::format("{} {}: HTTP {}{}{}", step, u->key, r.status, code.empty() ? "" : " ", code));
    return;
  }
  // HEAD answers 403 without a body both for a bad signature and, on AWS, for a missing key when
  // the credentials may not list the bucket: the upload that follows decides, and its 403 carries
  // the error code.
  if (u->step == S3Step::kHead && (r.status == 404 || r.status == 403)) {
    u->step = u->bytes.size() >= config_.multipart_threshold ? S3Step::kCreate : S3Step::kPut;
    u->attempt = 0;
    Send(u);
    return;
  }
  if (u->step == S3Step::kAbort) {
    if (r.status / 100 == 2) base::BumpSingleWriter(counters_.aborted_multipart);
    Finish(u, storage::ObjectWriteOutcome::kFailed, u->failure);
    return;
  }
  if (r.status / 100 != 2) {
    std::string code = XmlValue(r.body, "Code");
    std::string hint;
    if (code == "SignatureDoesNotMatch") hint = " (the secret access key, the region or the request signing is wrong)";
    if (code == "InvalidAccessKeyId") hint = " (the access key id is unknown to the service)";
    Fail(u, fmt::format("{} {}: HTTP {}{}{}{}", step, u->key, r.status, code.empty() ? "" : " ", code, hint));
    return;
  }
  Advance(u, r);
}

void S3ObjectStore::Advance(Upload* u, const ClientResponse& r) {
  u->attempt = 0;
  switch (u->step) {
    case S3Step::kHead:
      base::BumpSingleWriter(counters_.already_present);
      Finish(u, storage::ObjectWriteOutcome::kAlreadyPresent);
      return;
    case S3Step::kPut:
      base::BumpSingleWriter(counters_.uploaded);
      base::BumpSingleWriter(counters_.uploaded_bytes, u->bytes.size());
      Finish(u, storage::ObjectWriteOutcome::kStored);
      return;
    case S3Step::kCreate:
      u->upload_id = XmlValue(r.body, "UploadId");
      if (u->upload_id.empty()) {
        Fail(u, "CreateMultipartUpload " + u->key + ": no UploadId in the answer");
        return;
      }
      u->step = S3Step::kPart;
      u->part = 0;
      u->etags.clear();
      Send(u);
      return;
    case S3Step::kPart: {
      const std::string_view etag = r.Header("etag");
      if (etag.empty()) {
        Fail(u, fmt::format("UploadPart {} part {}: no ETag in the answer", u->key, u->part + 1));
        return;
      }
      u->etags.emplace_back(etag);
      ++u->part;
      if (u->part * config_.part_size >= u->bytes.size()) u->step = S3Step::kComplete;
      Send(u);
      return;
    }
    case S3Step::kComplete:
      base::BumpSingleWriter(counters_.uploaded);
      base::BumpSingleWriter(counters_.multipart_uploads);
      base::BumpSingleWriter(counters_.uploaded_bytes, u->bytes.size());
      Finish(u, storage::ObjectWriteOutcome::kStored);
      return;
    case S3Step::kAbort: return;  // handled in OnResponse
  }
}

void S3ObjectStore::Retry(Upload* u, const std::string& why) {
  if (u->step == S3Step::kAbort) {  // best effort: the service expires abandoned uploads too
    Finish(u, storage::ObjectWriteOutcome::kFailed, u->failure);
    return;
  }
  if (++u->attempt >= config_.max_attempts) {
    Fail(u, fmt::format("{} (after {} attempts)", why, u->attempt));
    return;
  }
  base::BumpSingleWriter(counters_.retries);
  auto delay = config_.backoff_base * (1ll << std::min<std::size_t>(u->attempt - 1, 16));
  delay = std::min<std::chrono::milliseconds>(delay, kMaxBackoff);
  jitter_state_ ^= jitter_state_ << 13;
  jitter_state_ ^= jitter_state_ >> 7;
  jitter_state_ ^= jitter_state_ << 17;
  const double factor = 0.75 + static_cast<double>(jitter_state_ % 1000) / 2000.0;
  loop_->RunAfter(std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(delay.count()) * factor)),
                  [this, u] {
                    if (stopping_) {
                      Finish(u, storage::ObjectWriteOutcome::kFailed, "store shut down");
                      return;
                    }
                    Send(u);
                  });
}

void S3ObjectStore::Fail(Upload* u, std::string error) {
  if (!u->upload_id.empty() && u->step != S3Step::kAbort && u->step != S3Step::kCreate && !stopping_) {
    u->failure = std::move(error);
    u->step = S3Step::kAbort;
    u->attempt = 0;
    Send(u);
    return;
  }
  Finish(u, storage::ObjectWriteOutcome::kFailed, std::move(error));
}

void S3ObjectStore::Finish(Upload* u, storage::ObjectWriteOutcome outcome, std::string error) {
  if (outcome == storage::ObjectWriteOutcome::kFailed) base::BumpSingleWriter(counters_.failed);
  const std::uint64_t token = u->token;
  uploads_.erase(u);
  delete u;
  std::lock_guard lock(done_mutex_);
  done_.push_back(storage::ObjectWriteResult{token, outcome, std::move(error)});
  if (waiter_ != nullptr) waiter_->Notify();
}

void S3ObjectStore::set_completion_waiter(engine::Waiter* waiter) {
  std::lock_guard lock(done_mutex_);
  waiter_ = waiter;
}

void S3ObjectStore::Report(engine::Snapshot& s) const {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const engine::Labels s3{{"store", "s3"}};
  s.Counter("attachment_objects_stored", v(counters_.uploaded), s3, "attachment objects written by the store");
  s.Counter("attachment_stored_bytes", v(counters_.uploaded_bytes), s3);
  s.Counter("attachment_objects_deduplicated", v(counters_.already_present), {{"store", "s3"}, {"found", "in_bucket"}},
            "attachment objects not written because they were already stored");
  s.Counter("attachment_objects_deduplicated", v(counters_.joined_in_flight), {{"store", "s3"}, {"found", "in_flight"}});
  s.Counter("attachment_objects_refused", v(counters_.failed), {{"store", "s3"}, {"reason", "write_error"}},
            "attachment objects the store did not write");
  s.Counter("s3_multipart_uploads", v(counters_.multipart_uploads), {}, "objects uploaded in parts");
  s.Counter("s3_multipart_aborted", v(counters_.aborted_multipart), {}, "multipart uploads aborted after a failure");
  s.Counter("s3_requests", v(counters_.requests), {}, "requests sent to the S3 service, retries included");
  s.Counter("s3_retries", v(counters_.retries), {}, "requests retried (network error, 5xx, SlowDown, 429)");
}

}  // namespace mailrail::net
