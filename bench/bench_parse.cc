// bench_parse: full MIME parse throughput (MB/s and messages/s) over every message of the public
// corpus, for mailrail's MessageParser and for GMime 3 in the same binary and run, plus the Graph
// JSON path over synthetic Graph messages built from the corpus' msgraph-docs samples, next to
// simdjson On-Demand merely walking the same documents.
//
// "Full parse" means, for both parsers: headers, subject/addresses/date/Message-ID decoded, every
// MIME part found and its content transfer-decoded (GMime: into a null stream; mailrail: hashed
// when an attachment, charset-converted when it is the body). Every message is loaded into memory
// before timing, into the form each parser takes as input without a copy (mailrail: a pooled
// Message whose raw bytes the ingest stage filled; GMime: a GByteArray behind a memory stream that
// does not own it), as in a pipeline where the bytes arrive before the parse stage runs.
//
//   build/bench/bench_parse --benchmark_min_time=2
//   MAILRAIL_CORPUS_DIR=/path/to/corpus build/bench/bench_parse
#include <benchmark/benchmark.h>
#include <gmime/gmime.h>
#include <simdjson.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "stages/mime_parser.h"
#include "tests/support/corpus.h"

namespace {

using mailrail::stages::InputKind;
using mailrail::stages::Message;
using mailrail::stages::MessageParser;

const std::vector<std::string>& CorpusMessages() {
  static const std::vector<std::string> messages = [] {
    std::vector<std::string> out;
    for (const auto& path : mailrail::testing::CorpusMessageFiles(mailrail::testing::CorpusDir())) {
      out.push_back(mailrail::testing::ReadFile(path));
    }
    return out;
  }();
  return messages;
}

std::size_t TotalBytes(const std::vector<std::string>& messages) {
  std::size_t total = 0;
  for (const auto& m : messages) total += m.size();
  return total;
}

// Synthetic Graph messages: the msgraph-docs message samples, each replicated with a distinct id
// and subject. With attachments, every fourth message carries the docs' fileAttachment inline with
// 24 KiB of base64 contentBytes (a small PDF); without, they are the bare message resources.
std::vector<std::string> MakeGraphMessages(bool with_attachments) {
  std::vector<std::string> out;
  const auto root = mailrail::testing::CorpusDir() / "msgraph-docs/api-reference/v1.0/api";
  std::vector<std::string> bases;
  for (const char* name : {"message-get/example1-get-message.response.json",
                           "message-get/example3-get-message-in-text.response.json"}) {
    std::string text = mailrail::testing::ReadFile(root / name);
    if (!text.empty()) bases.push_back(std::move(text));
  }
  std::string attachment = mailrail::testing::ReadFile(root / "attachment-get/example1-fileAttachment.response.json");
  if (bases.empty()) return out;
  std::string payload;
  while (payload.size() < 24 * 1024) payload += "UEsDBBQABgAIAAAAIQ4AAAAAQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=";
  payload.resize(24 * 1024);
  if (const auto at = attachment.find("UEsDBBQABgAIAAAAIQ4AAAAA"); at != std::string::npos) {
    attachment.replace(at, 24, payload);
  }
  for (int i = 0; i < 4000; ++i) {
    std::string m = bases[static_cast<std::size_t>(i) % bases.size()];
    const std::string tag = std::to_string(i);
    if (const auto at = m.find("\"subject\":"); at != std::string::npos) {
      const auto q = m.find('"', m.find('"', at + 10) + 1);
      m.insert(q, " #" + tag);
    }
    if (const auto at = m.find("\"id\":\""); at != std::string::npos) m.insert(at + 6, tag + "-");
    if (with_attachments && i % 4 == 0 && !attachment.empty()) {
      m.insert(m.find('{') + 1, "\"attachments\":[" + attachment + "],");
    }
    out.push_back(std::move(m));
  }
  return out;
}

const std::vector<std::string>& GraphMessages(bool with_attachments) {
  static const std::vector<std::string> with = MakeGraphMessages(true);
  static const std::vector<std::string> without = MakeGraphMessages(false);
  return with_attachments ? with : without;
}

void SkipWithoutCorpus(benchmark::State& state, const std::vector<std::string>& messages) {
  if (messages.empty()) {
    state.SkipWithError(("corpus not found at " + mailrail::testing::CorpusDir().string() +
                         " (set MAILRAIL_CORPUS_DIR)").c_str());
  }
}

// Messages whose raw bytes are filled once; ResetParse() forgets only what a parse produced.
std::vector<std::unique_ptr<Message>> MakeMessages(const std::vector<std::string>& raws, InputKind kind) {
  std::vector<std::unique_ptr<Message>> out;
  for (const auto& raw : raws) {
    auto m = std::make_unique<Message>();
    m->raw.reserve(raw.size() + 64);
    m->raw = raw;
    m->kind = kind;
    out.push_back(std::move(m));
  }
  return out;
}

void ResetParse(Message& m) {
  m.record.Clear();
  m.arena.Reset();
  m.parse_failed = false;
  m.parse_error = {};
}

void BM_MimeParse_Mailrail(benchmark::State& state) {
  const auto& raws = CorpusMessages();
  SkipWithoutCorpus(state, raws);
  auto messages = MakeMessages(raws, InputKind::kRfc822);
  MessageParser parser;
  std::size_t defects = 0;
  for (auto _ : state) {
    for (auto& m : messages) {
      ResetParse(*m);
      parser.Parse(*m);
      defects += m->record.defects.size();
      benchmark::DoNotOptimize(m->record.body_preview.data());
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * raws.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * TotalBytes(raws)));
  state.counters["messages"] = static_cast<double>(raws.size());
  state.counters["defects_per_msg"] =
      static_cast<double>(defects) / static_cast<double>(std::max<std::size_t>(1, state.iterations() * raws.size()));
}
BENCHMARK(BM_MimeParse_Mailrail)->Unit(benchmark::kMillisecond);

void GMimeDecodeTree(GMimeObject* object, GMimeStream* sink, std::size_t depth) {
  if (object == nullptr || depth > 64) return;
  if (GMIME_IS_MESSAGE_PART(object)) {
    GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(object));
    if (inner != nullptr) GMimeDecodeTree(g_mime_message_get_mime_part(inner), sink, depth + 1);
  } else if (GMIME_IS_MULTIPART(object)) {
    GMimeMultipart* multipart = GMIME_MULTIPART(object);
    const int n = g_mime_multipart_get_count(multipart);
    for (int i = 0; i < n; ++i) GMimeDecodeTree(g_mime_multipart_get_part(multipart, i), sink, depth + 1);
  } else if (GMIME_IS_PART(object)) {
    GMimeDataWrapper* content = g_mime_part_get_content(GMIME_PART(object));
    if (content != nullptr) g_mime_data_wrapper_write_to_stream(content, sink);
    benchmark::DoNotOptimize(g_mime_part_get_filename(GMIME_PART(object)));
  }
}

void BM_MimeParse_GMime(benchmark::State& state) {
  const auto& messages = CorpusMessages();
  SkipWithoutCorpus(state, messages);
  g_mime_init();
  std::vector<GByteArray*> arrays;
  for (const auto& m : messages) {
    GByteArray* array = g_byte_array_sized_new(static_cast<guint>(m.size()));
    g_byte_array_append(array, reinterpret_cast<const guint8*>(m.data()), static_cast<guint>(m.size()));
    arrays.push_back(array);
  }
  GMimeStream* sink = g_mime_stream_null_new();
  for (auto _ : state) {
    for (GByteArray* array : arrays) {
      GMimeStream* stream = g_mime_stream_mem_new_with_byte_array(array);
      g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
      GMimeParser* parser = g_mime_parser_new_with_stream(stream);
      GMimeMessage* message = g_mime_parser_construct_message(parser, nullptr);
      if (message != nullptr) {
        benchmark::DoNotOptimize(g_mime_message_get_subject(message));
        benchmark::DoNotOptimize(g_mime_message_get_message_id(message));
        benchmark::DoNotOptimize(g_mime_message_get_date(message));
        for (auto type : {GMIME_ADDRESS_TYPE_FROM, GMIME_ADDRESS_TYPE_TO, GMIME_ADDRESS_TYPE_CC}) {
          InternetAddressList* list = g_mime_message_get_addresses(message, type);
          benchmark::DoNotOptimize(internet_address_list_length(list));
        }
        GMimeDecodeTree(g_mime_message_get_mime_part(message), sink, 0);
        g_object_unref(message);
      }
      g_object_unref(parser);
      g_object_unref(stream);
    }
  }
  g_object_unref(sink);
  for (GByteArray* array : arrays) g_byte_array_free(array, TRUE);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * messages.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * TotalBytes(messages)));
}
BENCHMARK(BM_MimeParse_GMime)->Unit(benchmark::kMillisecond);

void BM_GraphJson_Mailrail(benchmark::State& state) {
  const auto& raws = GraphMessages(state.range(0) != 0);
  SkipWithoutCorpus(state, raws);
  auto messages = MakeMessages(raws, InputKind::kGraphJson);
  MessageParser parser;
  std::size_t failures = 0;
  for (auto _ : state) {
    for (auto& m : messages) {
      ResetParse(*m);
      parser.Parse(*m);
      failures += m->parse_failed;
      benchmark::DoNotOptimize(m->record.body_preview.data());
    }
  }
  if (failures > 0) state.SkipWithError("Graph JSON parse failed");
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * raws.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * TotalBytes(raws)));
}
BENCHMARK(BM_GraphJson_Mailrail)->ArgName("attachments")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);

// Peer: simdjson On-Demand visiting every top-level field and reading every string value of the
// same documents (no record, no base64, no HTML), i.e. the raw parser speed.
void BM_GraphJson_SimdjsonWalk(benchmark::State& state) {
  const auto& raws = GraphMessages(state.range(0) != 0);
  SkipWithoutCorpus(state, raws);
  std::vector<std::string> buffers;
  for (const auto& raw : raws) {
    std::string b;
    b.reserve(raw.size() + simdjson::SIMDJSON_PADDING);
    b = raw;
    buffers.push_back(std::move(b));
  }
  simdjson::ondemand::parser parser;
  for (auto _ : state) {
    for (const auto& buffer : buffers) {
      auto doc = parser.iterate(simdjson::padded_string_view(buffer.data(), buffer.size(), buffer.capacity()));
      simdjson::ondemand::object object;
      if (doc.get_object().get(object) != simdjson::SUCCESS) continue;
      for (auto field : object) {
        std::string_view s;
        if (field.value().get_string().get(s) == simdjson::SUCCESS) benchmark::DoNotOptimize(s.data());
      }
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * raws.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * TotalBytes(raws)));
  state.SetLabel(simdjson::builtin_implementation()->name());
}
BENCHMARK(BM_GraphJson_SimdjsonWalk)->ArgName("attachments")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
