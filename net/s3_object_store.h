#pragma once
// S3ObjectStore: the ObjectStore (storage/object_store.h) on an S3-compatible service, with
// requests signed by hand (net/sigv4.h, payload always signed with its SHA-256) and sent by an
// HttpClient on the store's own network thread (one EventLoop), so the attachment stage never
// waits on the network.
//
// Objects: key <prefix><sha256 hex> in `bucket`, path-style URLs (<endpoint>/<bucket>/<key>),
//   which every S3-compatible server accepts; the record's reference is s3://<bucket>/<key>.
// Per object: HEAD first (200: already there, nothing sent: dedup across messages and runs);
//   404 or 403 (AWS answers 403 for a missing key to credentials that may not list the bucket;
//   a HEAD answer has no body to tell a bad signature apart, the upload's answer will): PUT Object when the object is smaller than multipart_threshold (its content address is
//   its payload hash, so nothing is hashed twice), else CreateMultipartUpload, UploadPart
//   (part_size bytes each, one after the other, each part hashed for its signature) and
//   CompleteMultipartUpload; a multipart upload that fails after it was created is aborted
//   (AbortMultipartUpload) so the service frees its parts.
// Retries: network errors, 5xx (503 SlowDown included), 429, and a 200 to
//   CompleteMultipartUpload whose body is an <Error> are retried, up to max_attempts per
//   request, after backoff_base * 2^(attempt-1) (capped at 5 s) with +-25% jitter. Other 4xx are
//   final; a 403 names the service's error code (SignatureDoesNotMatch: wrong secret, region or
//   clock; InvalidAccessKeyId) in the error, which the attachment stage logs. Secrets are never
//   logged: errors carry only the status, the code and the key.
// Budget: none (the service meters storage); see [attachments] budget_mib in docs/operations.md.
// Threading: the ObjectStore methods on the attachment stage's thread; everything else on the
//   network thread. Results cross over under a mutex, and the stage's waiter is notified under
//   the same mutex, so set_completion_waiter(nullptr) is a clean hand-back of the waiter.
//   Report from any thread (relaxed loads of single-writer counters).
// Lifetime: the destructor lets operations in flight finish (their buffers belong to the stage,
//   which destroys the store before them), then stops and joins the network thread.

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/base/result.h"
#include "net/event_loop.h"
#include "net/http_client.h"
#include "net/sigv4.h"
#include "storage/object_store.h"

namespace mailrail::net {

// The bucket and how to reach it ([attachments.s3] in docs/operations.md); copied into the store at
// Create. `credentials.secret_access_key` must never be logged or reported.
struct S3StoreConfig {
  std::string endpoint;  // http(s)://host[:port]
  std::string region = "us-east-1";
  std::string bucket;
  SigV4Credentials credentials;
  std::string prefix;  // prepended to the hex digest
  std::uint64_t multipart_threshold = 64u << 20;
  std::uint64_t part_size = 16u << 20;  // S3 requires >= 5 MiB for every part but the last
  std::size_t max_attempts = 5;
  std::size_t max_in_flight = 8;        // objects
  std::chrono::milliseconds request_timeout{60000};
  std::chrono::milliseconds backoff_base{200};
  bool verify_peer = true;
  std::string ca_file;
};

// Counters: single writer (the network thread; joined_in_flight: the stage's thread), relaxed
// loads from the stats thread.
struct S3StoreCounters {
  std::atomic<std::uint64_t> uploaded{0};
  std::atomic<std::uint64_t> uploaded_bytes{0};
  std::atomic<std::uint64_t> multipart_uploads{0};
  std::atomic<std::uint64_t> already_present{0};
  std::atomic<std::uint64_t> joined_in_flight{0};  // stage thread
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> aborted_multipart{0};
  std::atomic<std::uint64_t> requests{0};
};

class S3ObjectStore final : public storage::ObjectStore {
 public:
  static base::Result<std::unique_ptr<S3ObjectStore>> Create(S3StoreConfig config);
  ~S3ObjectStore() override;
  S3ObjectStore(const S3ObjectStore&) = delete;
  S3ObjectStore& operator=(const S3ObjectStore&) = delete;

  std::string Reference(const storage::ObjectDigest& sha256) const override;
  bool TrySubmit(const storage::ObjectWrite& write) override;
  void Poll(std::vector<storage::ObjectWriteResult>& out) override;
  std::size_t in_flight() const override { return in_flight_tokens_; }
  void set_completion_waiter(engine::Waiter* waiter) override;
  bool needs_polling() const override { return false; }
  void Report(engine::Snapshot& snapshot) const override;

  std::string KeyOf(const storage::ObjectDigest& sha256) const { return config_.prefix + storage::DigestHex(sha256); }
  const S3StoreCounters& counters() const { return counters_; }

 private:
  struct Upload;
  explicit S3ObjectStore(S3StoreConfig config) : config_(std::move(config)) {}
  // Network thread.
  void Begin(Upload* u);
  void Send(Upload* u);
  void OnResponse(Upload* u, base::Result<ClientResponse> response);
  void Advance(Upload* u, const ClientResponse& response);
  void Retry(Upload* u, const std::string& why);
  void Fail(Upload* u, std::string error);
  void Finish(Upload* u, storage::ObjectWriteOutcome outcome, std::string error = {});

  S3StoreConfig config_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<HttpClient> client_;
  std::thread loop_thread_;

  // Stage thread: objects in flight by hex digest, and the tokens that joined each.
  std::unordered_map<std::string, std::vector<std::uint64_t>> joined_;
  std::unordered_map<std::uint64_t, std::string> hex_of_token_;
  std::size_t in_flight_objects_ = 0;
  std::size_t in_flight_tokens_ = 0;

  std::mutex done_mutex_;
  std::vector<storage::ObjectWriteResult> done_;  // under done_mutex_
  engine::Waiter* waiter_ = nullptr;              // under done_mutex_ (notified under it too)
  std::vector<storage::ObjectWriteResult> taken_;  // stage thread

  // Network thread.
  std::unordered_set<Upload*> uploads_;  // owned: deleted by Finish or the destructor
  bool stopping_ = false;
  std::uint64_t jitter_state_ = 0x9E3779B97F4A7C15ull;
  S3StoreCounters counters_;
};

}  // namespace mailrail::net
