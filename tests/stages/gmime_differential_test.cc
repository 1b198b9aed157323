// Differential test: mailrail's MIME parser against GMime 3 over every message of the corpus.
// Compared per message: subject, From/To/Cc addresses, Message-ID, the MIME tree (media type and
// depth of every entity, in pre-order) and the SHA-256 of every decoded attachment.
// The test fails when a field's agreement drops below its floor (the rate measured when the
// floors were set, rounded down), so a regression shows; docs/parse-differential.md explains each
// disagreement class. With MAILRAIL_REPORT_DIR set it also writes the per-class counts and
// example files to $MAILRAIL_REPORT_DIR/parse-differential-data.md.
#include <gmime/gmime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "stages/mime_parser.h"
#include "stages/text_codec.h"
#include "tests/support/corpus.h"

namespace mailrail::stages {
namespace {

std::string Collapse(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

std::string LowerDomain(std::string a) {
  const std::size_t at = a.rfind('@');
  for (std::size_t i = at == std::string::npos ? a.size() : at; i < a.size(); ++i) {
    if (a[i] >= 'A' && a[i] <= 'Z') a[i] = static_cast<char>(a[i] + 32);
  }
  return a;
}

std::string Hex(const Sha256Digest& d) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (auto b : d) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

struct View {
  std::string subject;
  std::vector<std::string> from, to, cc;  // "name <address>"
  std::string message_id;
  std::vector<std::string> parts;         // "depth:type/subtype"
  std::vector<std::string> attachments;   // sorted sha256 hex of decoded bytes
};

void AddGMimeAddresses(InternetAddressList* list, std::vector<std::string>& out) {
  if (list == nullptr) return;
  for (int i = 0; i < internet_address_list_length(list); ++i) {
    InternetAddress* ia = internet_address_list_get_address(list, i);
    if (INTERNET_ADDRESS_IS_GROUP(ia)) {
      AddGMimeAddresses(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia)), out);
      continue;
    }
    const char* name = internet_address_get_name(ia);
    const char* addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
    out.push_back(Collapse(name ? name : "") + " <" + LowerDomain(addr ? addr : "") + ">");
  }
}

void WalkGMime(GMimeObject* object, int depth, View& view) {
  if (object == nullptr || depth > 64) return;
  GMimeContentType* ct = g_mime_object_get_content_type(object);
  char* type = ct != nullptr ? g_mime_content_type_get_mime_type(ct) : g_strdup("text/plain");
  std::string media(type);
  g_free(type);
  std::transform(media.begin(), media.end(), media.begin(), [](unsigned char c) { return std::tolower(c); });
  view.parts.push_back(std::to_string(depth) + ":" + media);
  if (GMIME_IS_MESSAGE_PART(object)) {
    GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(object));
    if (inner != nullptr) WalkGMime(g_mime_message_get_mime_part(inner), depth + 1, view);
  } else if (GMIME_IS_MULTIPART(object)) {
    GMimeMultipart* multipart = GMIME_MULTIPART(object);
    for (int i = 0; i < g_mime_multipart_get_count(multipart); ++i) {
      WalkGMime(g_mime_multipart_get_part(multipart, i), depth + 1, view);
    }
  } else if (GMIME_IS_PART(object)) {
    GMimePart* part = GMIME_PART(object);
    const char* filename = g_mime_part_get_filename(part);
    GMimeContentDisposition* disposition = g_mime_object_get_content_disposition(object);
    const char* kind = disposition != nullptr ? g_mime_content_disposition_get_disposition(disposition) : nullptr;
    const bool attachment = (filename != nullptr && *filename != '\0') ||
                            (kind != nullptr && *kind != '\0' && g_ascii_strcasecmp(kind, "inline") != 0);
    GMimeDataWrapper* content = g_mime_part_get_content(part);
    if (attachment && content != nullptr) {
      GMimeStream* mem = g_mime_stream_mem_new();
      g_mime_data_wrapper_write_to_stream(content, mem);
      GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
      view.attachments.push_back(
          Hex(Sha256(std::string_view(reinterpret_cast<const char*>(bytes->data), bytes->len))));
      g_object_unref(mem);
    }
  }
}

bool GMimeView(const std::string& raw, View& view) {
  GMimeStream* stream = g_mime_stream_mem_new_with_buffer(raw.data(), raw.size());
  GMimeParser* parser = g_mime_parser_new_with_stream(stream);
  GMimeMessage* message = g_mime_parser_construct_message(parser, nullptr);
  g_object_unref(parser);
  g_object_unref(stream);
  if (message == nullptr) return false;
  const char* subject = g_mime_message_get_subject(message);
  view.subject = Collapse(subject ? subject : "");
  AddGMimeAddresses(g_mime_message_get_from(message), view.from);
  if (view.from.size() > 1) view.from.resize(1);  // the record keeps one From mailbox
  AddGMimeAddresses(g_mime_message_get_to(message), view.to);
  AddGMimeAddresses(g_mime_message_get_cc(message), view.cc);
  const char* id = g_mime_message_get_message_id(message);
  view.message_id = id ? id : "";
  WalkGMime(g_mime_message_get_mime_part(message), 0, view);
  std::sort(view.attachments.begin(), view.attachments.end());
  g_object_unref(message);
  return true;
}

void OurView(const Record& r, View& view) {
  view.subject = Collapse(r.subject);
  auto add = [](const Address& a, std::vector<std::string>& out) {
    out.push_back(Collapse(a.name) + " <" + std::string(a.address) + ">");
  };
  if (r.from) add(*r.from, view.from);
  for (const auto& a : r.to) add(a, view.to);
  for (const auto& a : r.cc) add(a, view.cc);
  view.message_id = r.message_id ? std::string(*r.message_id) : "";
  for (const auto& p : r.parts) view.parts.push_back(std::to_string(p.depth) + ":" + std::string(p.content_type));
  for (const auto& a : r.attachments) {
    if (a.content_type != "message/rfc822") view.attachments.push_back(Hex(a.sha256));
  }
  std::sort(view.attachments.begin(), view.attachments.end());
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

TEST(GMimeDifferentialTest, AgreesWithGMimeOnTheCorpus) {
  const auto root = testing::CorpusDir();
  const auto files = testing::CorpusMessageFiles(root);
  if (files.empty()) GTEST_SKIP() << "corpus not found at " << root << " (set MAILRAIL_CORPUS_DIR)";
  g_mime_init();
  MessageParser parser;
  Message msg;
  const std::vector<std::string> fields = {"subject", "from", "to", "cc", "message_id", "mime_tree", "attachments"};
  std::map<std::string, std::size_t> agree;
  std::map<std::string, std::vector<std::string>> examples;
  // MAILRAIL_DIFF_EXAMPLES=N lists up to N example files per disagreeing field (default 6).
  const char* examples_env = std::getenv("MAILRAIL_DIFF_EXAMPLES");
  const std::size_t kExamples = examples_env != nullptr ? std::strtoul(examples_env, nullptr, 10) : 6;
  std::size_t compared = 0, all_agree = 0, gmime_failed = 0, ours_failed = 0;
  for (const auto& path : files) {
    const std::string raw = testing::ReadFile(path);
    msg.Reset();
    msg.raw = raw;
    parser.Parse(msg);
    View theirs;
    if (!GMimeView(raw, theirs)) {
      ++gmime_failed;
      continue;
    }
    if (msg.parse_failed) ++ours_failed;
    View ours;
    OurView(msg.record, ours);
    ++compared;
    const std::string rel = std::filesystem::relative(path, root).string();
    bool every = true;
    auto check = [&](const std::string& field, const std::string& a, const std::string& b) {
      if (a == b) {
        ++agree[field];
      } else {
        every = false;
        auto& ex = examples[field];
        if (ex.size() < kExamples) ex.push_back(rel + ": ours `" + a.substr(0, 120) + "` vs GMime `" + b.substr(0, 120) + "`");
      }
    };
    check("subject", ours.subject, theirs.subject);
    check("from", Join(ours.from), Join(theirs.from));
    check("to", Join(ours.to), Join(theirs.to));
    check("cc", Join(ours.cc), Join(theirs.cc));
    check("message_id", ours.message_id, theirs.message_id);
    check("mime_tree", Join(ours.parts), Join(theirs.parts));
    check("attachments", Join(ours.attachments), Join(theirs.attachments));
    all_agree += every;
  }
  ASSERT_GT(compared, 1000u);
  // Floors: measured agreement when they were set, rounded down (see docs/parse-differential.md).
  const std::map<std::string, double> floors = {{"subject", 0.99}, {"from", 0.99},      {"to", 0.98},
                                                {"cc", 0.99},      {"message_id", 0.99}, {"mime_tree", 0.98},
                                                {"attachments", 0.99}};
  std::string report = "| field | agree | rate |\n|---|---:|---:|\n";
  for (const auto& f : fields) {
    const double rate = static_cast<double>(agree[f]) / static_cast<double>(compared);
    report += "| " + f + " | " + std::to_string(agree[f]) + "/" + std::to_string(compared) + " | " +
              std::to_string(rate * 100).substr(0, 5) + "% |\n";
    EXPECT_GE(rate, floors.at(f)) << f;
  }
  report += "\nmessages compared: " + std::to_string(compared) + "; all fields agree: " + std::to_string(all_agree) +
            "; GMime could not parse: " + std::to_string(gmime_failed) +
            "; mailrail parse_failed: " + std::to_string(ours_failed) + "\n";
  for (const auto& f : fields) {
    if (examples[f].empty()) continue;
    report += "\n### " + f + " (examples)\n";
    for (const auto& e : examples[f]) report += "- " + e + "\n";
  }
  std::cout << report;
  if (const char* dir = std::getenv("MAILRAIL_REPORT_DIR"); dir != nullptr) {
    std::ofstream(std::filesystem::path(dir) / "parse-differential-data.md") << report;
  }
}

}  // namespace
}  // namespace mailrail::stages
