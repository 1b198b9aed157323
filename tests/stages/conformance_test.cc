// Conformance against other parsers' expected outputs in the public corpus:
//  - stalwart-mail-parser: resources/eml/{rfc,legacy,thirdparty,malformed}/NNN.eml with NNN.json, the
//    serialised parse of the message with every CR removed. Compared: subject, From (first mailbox),
//    To, Cc, Message-ID, Date (UTC instant), the MIME tree (media type and depth of every entity in
//    pre-order) and the body text (their first text_body part when it is text/plain).
//  - james-mime4j: NAME.msg with NAME_decoded_ID.{txt,bin}, the transfer-decoded leaf bodies.
//    Compared: the set of leaf IDs and each leaf's decoded size.
// Every disagreement must be listed in tests/stages/conformance_known_disagreements.txt with a
// reason; a NEW disagreement fails the test. Listed entries that now agree are reported as fixed.
// With MAILRAIL_REPORT_DIR set, the per-suite agreement table is written to
// $MAILRAIL_REPORT_DIR/parse-conformance-data.md.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "stages/date_time.h"
#include "stages/mime_parser.h"
#include "stages/record_builder.h"
#include "tests/support/corpus.h"

namespace mailrail::stages {
namespace {

namespace fs = std::filesystem;
namespace dom = simdjson::dom;

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

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string LowerDomain(std::string a) {
  const std::size_t at = a.rfind('@');
  if (at != std::string::npos) a = a.substr(0, at) + Lower(a.substr(at));
  return a;
}

// field -> comparable string
using Fields = std::map<std::string, std::string>;

struct Disagreement {
  std::string suite, file, field, ours, theirs;
};

class Tally {
 public:
  void Add(const std::string& suite, const std::string& file, const Fields& ours, const Fields& theirs) {
    ++messages_[suite];
    for (const auto& [field, theirs_value] : theirs) {
      auto it = ours.find(field);
      const std::string ours_value = it == ours.end() ? "" : it->second;
      ++compared_[suite][field];
      if (ours_value == theirs_value) {
        ++agreed_[suite][field];
      } else {
        disagreements_.push_back({suite, file, field, ours_value, theirs_value});
      }
    }
  }
  std::string Table() const {
    std::ostringstream out;
    out << "| suite | messages | field | agree | rate |\n|---|---:|---|---:|---:|\n";
    for (const auto& [suite, fields] : compared_) {
      std::size_t all = 0, ok = 0;
      for (const auto& [field, n] : fields) {
        const std::size_t a = agreed_.at(suite).count(field) ? agreed_.at(suite).at(field) : 0;
        all += n;
        ok += a;
        out << "| " << suite << " | " << messages_.at(suite) << " | " << field << " | " << a << "/" << n << " | "
            << Percent(a, n) << " |\n";
      }
      out << "| **" << suite << "** | " << messages_.at(suite) << " | **all fields** | " << ok << "/" << all << " | **"
          << Percent(ok, all) << "** |\n";
    }
    return out.str();
  }
  const std::vector<Disagreement>& disagreements() const { return disagreements_; }

 private:
  static std::string Percent(std::size_t a, std::size_t n) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.1f%%", n == 0 ? 100.0 : 100.0 * static_cast<double>(a) / static_cast<double>(n));
    return buffer;
  }
  std::map<std::string, std::size_t> messages_;
  std::map<std::string, std::map<std::string, std::size_t>> compared_, agreed_;
  std::vector<Disagreement> disagreements_;
};

// --- our side ------------------------------------------------------------------------------------

std::string Addresses(const std::vector<Address>& list) {
  std::string out;
  for (const auto& a : list) out += (out.empty() ? "" : ", ") + Collapse(a.name) + " <" + std::string(a.address) + ">";
  return out;
}

std::string Tree(const Record& r) {
  std::string out;
  for (const auto& p : r.parts) out += (out.empty() ? "" : ", ") + std::to_string(p.depth) + ":" + std::string(p.content_type);
  return out;
}

Fields OurFields(const Message& msg) {
  const Record& r = msg.record;
  Fields f;
  f["subject"] = Collapse(r.subject);
  f["from"] = r.from ? Addresses({*r.from}) : "";
  f["to"] = Addresses(r.to);
  f["cc"] = Addresses(r.cc);
  f["message_id"] = r.message_id ? std::string(*r.message_id) : "";
  f["date"] = r.date_unix_ms ? std::to_string(*r.date_unix_ms) : "";
  f["mime_tree"] = Tree(r);
  f["body_text"] = Collapse(r.body_text);
  return f;
}

// --- stalwart ------------------------------------------------------------------------------------

std::string JsonString(dom::element e) {
  std::string_view s;
  return e.get(s) == simdjson::SUCCESS ? std::string(s) : std::string();
}

void StalwartAddresses(dom::element value, std::vector<std::string>& out) {
  dom::element address;
  if (value["Address"].get(address) != simdjson::SUCCESS) return;
  dom::array list;
  if (address["List"].get(list) == simdjson::SUCCESS) {
    for (dom::element a : list) {
      out.push_back(Collapse(JsonString(a["name"])) + " <" + LowerDomain(JsonString(a["address"])) + ">");
    }
  }
  dom::array groups;
  if (address["Group"].get(groups) == simdjson::SUCCESS) {
    for (dom::element g : groups) {
      dom::array members;
      if (g["addresses"].get(members) != simdjson::SUCCESS) continue;
      for (dom::element a : members) {
        out.push_back(Collapse(JsonString(a["name"])) + " <" + LowerDomain(JsonString(a["address"])) + ">");
      }
    }
  }
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// First header of `name` in part `part`, or an invalid element.
bool FindHeader(dom::element part, std::string_view name, dom::element& value) {
  dom::array headers;
  if (part["headers"].get(headers) != simdjson::SUCCESS) return false;
  for (dom::element h : headers) {
    std::string_view n;
    if (h["name"].get(n) == simdjson::SUCCESS && n == name) return h["value"].get(value) == simdjson::SUCCESS;
  }
  return false;
}

void StalwartTree(dom::array parts, std::size_t index, int depth, bool digest_child, std::vector<std::string>& out) {
  dom::element part;
  if (parts.at(index).get(part) != simdjson::SUCCESS) return;
  std::string type = digest_child ? "message/rfc822" : "text/plain";
  dom::element ct;
  if (FindHeader(part, "content_type", ct)) {
    dom::element c;
    if (ct["ContentType"].get(c) == simdjson::SUCCESS) {
      std::string sub = JsonString(c["c_subtype"]);
      type = Lower(JsonString(c["c_type"]) + "/" + (sub.empty() ? "" : sub));
    }
  }
  out.push_back(std::to_string(depth) + ":" + type);
  dom::element body;
  if (part["body"].get(body) != simdjson::SUCCESS) return;
  dom::array children;
  if (body["Multipart"].get(children) == simdjson::SUCCESS) {
    const bool digest = type == "multipart/digest";
    for (dom::element child : children) {
      std::uint64_t i;
      if (child.get(i) == simdjson::SUCCESS) StalwartTree(parts, i, depth + 1, digest, out);
    }
    return;
  }
  dom::element nested;
  if (body["Message"].get(nested) == simdjson::SUCCESS) {
    dom::array nested_parts;
    if (nested["parts"].get(nested_parts) == simdjson::SUCCESS) StalwartTree(nested_parts, 0, depth + 1, false, out);
  }
}

Fields StalwartFields(dom::element message) {
  Fields f;
  dom::array parts;
  if (message["parts"].get(parts) != simdjson::SUCCESS) return f;
  dom::element root = parts.at(0);
  dom::element v;
  f["subject"] = FindHeader(root, "subject", v) ? Collapse(JsonString(v["Text"])) : "";
  std::vector<std::string> list;
  if (FindHeader(root, "from", v)) StalwartAddresses(v, list);
  if (list.size() > 1) list.resize(1);
  f["from"] = Join(list);
  list.clear();
  if (FindHeader(root, "to", v)) StalwartAddresses(v, list);
  f["to"] = Join(list);
  list.clear();
  if (FindHeader(root, "cc", v)) StalwartAddresses(v, list);
  f["cc"] = Join(list);
  f["message_id"] = FindHeader(root, "message_id", v) ? JsonString(v["Text"]) : "";
  f["date"] = "";
  dom::element dt;
  if (FindHeader(root, "date", v) && v["DateTime"].get(dt) == simdjson::SUCCESS) {
    auto num = [&](const char* k) {
      std::int64_t n = 0;
      std::uint64_t u = 0;
      if (dt[k].get(n) == simdjson::SUCCESS) return n;
      if (dt[k].get(u) == simdjson::SUCCESS) return static_cast<std::int64_t>(u);
      return std::int64_t{0};
    };
    bool before = false;
    if (dt["tz_before_gmt"].get(before) != simdjson::SUCCESS) before = false;
    const std::int64_t offset = (before ? -1 : 1) * (num("tz_hour") * 60 + num("tz_minute"));
    const std::int64_t days = DaysFromCivil(num("year"), static_cast<unsigned>(num("month")), static_cast<unsigned>(num("day")));
    const std::int64_t seconds = days * 86400 + num("hour") * 3600 + num("minute") * 60 + num("second") - offset * 60;
    f["date"] = std::to_string(seconds * 1000);
  }
  std::vector<std::string> tree;
  StalwartTree(parts, 0, 0, false, tree);
  f["mime_tree"] = Join(tree);
  // Body text: their first text_body part, when it is text/plain.
  dom::array text_body;
  if (message["text_body"].get(text_body) == simdjson::SUCCESS && text_body.size() > 0) {
    std::uint64_t i = 0;
    dom::element part;
    dom::element text;
    if (text_body.at(0).get(i) == simdjson::SUCCESS && parts.at(i).get(part) == simdjson::SUCCESS &&
        part["body"]["Text"].get(text) == simdjson::SUCCESS) {
      f["body_text"] = Collapse(JsonString(text));
    }
  }
  return f;
}

// --- mime4j --------------------------------------------------------------------------------------

// Our leaf entities by mime4j ID (root "1", child i of a multipart or the body of a
// message/rfc822 entity: parent ID + "_" + i) -> decoded size.
std::map<std::string, std::uint64_t> OurLeaves(const Record& r) {
  std::map<std::string, std::uint64_t> leaves;
  std::vector<std::string> ids(r.parts.size());
  std::vector<int> children(r.parts.size(), 0);
  std::vector<std::size_t> stack;  // indices of open ancestors
  for (std::size_t k = 0; k < r.parts.size(); ++k) {
    const auto& p = r.parts[k];
    while (!stack.empty() && r.parts[stack.back()].depth >= p.depth) stack.pop_back();
    if (stack.empty()) {
      ids[k] = "1";
    } else {
      ids[k] = ids[stack.back()] + "_" + std::to_string(++children[stack.back()]);
    }
    stack.push_back(k);
  }
  for (std::size_t k = 0; k < r.parts.size(); ++k) {
    const bool has_child = k + 1 < r.parts.size() && r.parts[k + 1].depth > r.parts[k].depth;
    const bool container = r.parts[k].content_type.substr(0, 10) == "multipart/" || has_child;
    if (!container) leaves[ids[k]] = r.parts[k].decoded_size;
  }
  return leaves;
}

// --- the test ------------------------------------------------------------------------------------

struct Known {
  std::string reason;
  bool seen = false;
};

std::map<std::string, Known> LoadKnown(const fs::path& path) {
  std::map<std::string, Known> known;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    // suite <TAB> file <TAB> field <TAB> reason
    std::istringstream fields(line);
    std::string suite, file, field, reason;
    std::getline(fields, suite, '\t');
    std::getline(fields, file, '\t');
    std::getline(fields, field, '\t');
    std::getline(fields, reason);
    known[suite + "\t" + file + "\t" + field] = Known{reason};
  }
  return known;
}

TEST(ConformanceTest, AgreesWithStalwartAndMime4jExceptKnownDisagreements) {
  const fs::path root = testing::CorpusDir();
  const fs::path stalwart = root / "stalwart-mail-parser/resources/eml";
  const fs::path mime4j = root / "james-mime4j/core/src/test/resources";
  if (!fs::is_directory(stalwart) || !fs::is_directory(mime4j)) {
    GTEST_SKIP() << "corpus not found at " << root << " (set MAILRAIL_CORPUS_DIR)";
  }
  MessageParser parser;
  Message msg;
  Tally tally;
  dom::parser json;
  for (const char* suite : {"rfc", "legacy", "thirdparty", "malformed"}) {
    std::vector<fs::path> emls;
    for (const auto& e : fs::directory_iterator(stalwart / suite)) {
      if (e.path().extension() == ".eml") emls.push_back(e.path());
    }
    std::sort(emls.begin(), emls.end());
    for (const auto& eml : emls) {
      fs::path expected = eml;
      expected.replace_extension(".json");
      if (!fs::exists(expected)) continue;
      std::string raw = testing::ReadFile(eml);
      std::erase(raw, '\r');  // their .json is the parse of the CR-stripped input
      msg.Reset();
      msg.raw = raw;
      parser.Parse(msg);
      dom::element doc;
      ASSERT_EQ(json.load(expected.string()).get(doc), simdjson::SUCCESS) << expected;
      tally.Add(std::string("stalwart/") + suite, fs::relative(eml, root).string(), OurFields(msg), StalwartFields(doc));
    }
  }
  for (const char* dir : {"testmsgs", "mimetools-testmsgs"}) {
    std::vector<fs::path> msgs;
    for (const auto& e : fs::directory_iterator(mime4j / dir)) {
      if (e.path().extension() == ".msg") msgs.push_back(e.path());
    }
    std::sort(msgs.begin(), msgs.end());
    for (const auto& path : msgs) {
      const std::string stem = path.stem().string();
      Fields theirs, ours;
      const std::string input = testing::ReadFile(path);
      const bool input_has_cr = input.find('\r') != std::string::npos;
      // Their .txt bodies were written with CRLF line ends. For an LF input that is one extra
      // byte per line of a 7bit/8bit/QP body, but nothing for a base64 body whose content already
      // had CRLFs; both sizes are accepted for .txt leaves of LF inputs.
      std::map<std::string, std::uint64_t> alternative_size;
      std::map<std::string, std::uint64_t> expected_leaves;
      for (const auto& e : fs::directory_iterator(mime4j / dir)) {
        const std::string name = e.path().filename().string();
        const std::string prefix = stem + "_decoded_";
        if (name.rfind(prefix, 0) != 0) continue;
        const std::string id = e.path().stem().string().substr(prefix.size());
        expected_leaves[id] = fs::file_size(e.path());
        if (e.path().extension() == ".txt" && !input_has_cr) {
          const std::string text = testing::ReadFile(e.path());
          std::uint64_t lf_size = text.size();
          for (std::size_t i = 0; i + 1 < text.size(); ++i) lf_size -= text[i] == '\r' && text[i + 1] == '\n';
          alternative_size[id] = lf_size;
        }
      }
      if (expected_leaves.empty()) continue;
      msg.Reset();
      msg.raw = input;
      parser.Parse(msg);
      const auto our_leaves = OurLeaves(msg.record);
      for (auto& [id, size] : expected_leaves) {
        auto ours_it = our_leaves.find(id);
        auto alt = alternative_size.find(id);
        if (ours_it != our_leaves.end() && alt != alternative_size.end() && ours_it->second == alt->second) {
          size = alt->second;
        }
      }
      auto ids = [](const std::map<std::string, std::uint64_t>& m, bool sizes) {
        std::string out;
        for (const auto& [id, size] : m) out += id + (sizes ? "=" + std::to_string(size) : "") + " ";
        return out;
      };
      theirs["leaf_ids"] = ids(expected_leaves, false);
      ours["leaf_ids"] = ids(our_leaves, false);
      theirs["decoded_sizes"] = ids(expected_leaves, true);
      ours["decoded_sizes"] = ids(our_leaves, true);
      tally.Add(std::string("mime4j/") + dir, fs::relative(path, root).string(), ours, theirs);
    }
  }

#ifdef MAILRAIL_SOURCE_DIR
  const fs::path known_path = fs::path(MAILRAIL_SOURCE_DIR) / "tests/stages/conformance_known_disagreements.txt";
#else
  const fs::path known_path = "tests/stages/conformance_known_disagreements.txt";
#endif
  auto known = LoadKnown(known_path);
  std::string fresh;
  for (const auto& d : tally.disagreements()) {
    auto it = known.find(d.suite + "\t" + d.file + "\t" + d.field);
    if (it != known.end()) {
      it->second.seen = true;
      continue;
    }
    fresh += d.suite + "\t" + d.file + "\t" + d.field + "\tours `" + d.ours.substr(0, 200) + "` theirs `" +
             d.theirs.substr(0, 200) + "`\n";
  }
  std::size_t fixed = 0;
  for (const auto& [key, k] : known) {
    if (!k.seen) {
      ++fixed;
      std::cout << "known disagreement now agrees (remove it from the list): " << key << "\n";
    }
  }
  const std::string table = tally.Table();
  std::cout << table << "\ndisagreements: " << tally.disagreements().size() << " (known: " << known.size()
            << ", fixed since listed: " << fixed << ")\n";
  if (const char* dir = std::getenv("MAILRAIL_REPORT_DIR"); dir != nullptr) {
    std::ofstream(fs::path(dir) / "parse-conformance-data.md") << table;
    std::ofstream(fs::path(dir) / "parse-conformance-new.txt") << fresh;
  }
  EXPECT_TRUE(fresh.empty()) << "new disagreements (fix them, or list them with a reason in " << known_path
                             << "):\n" << fresh;
}

// The attachment store decodes Attachment::encoded a second time and files the bytes under the
// parser's sha256: on every attachment of the corpus the second decode must give those bytes.
TEST(ConformanceTest, EveryCorpusAttachmentDecodesAgainToItsHash) {
  const fs::path root = testing::CorpusDir();
  if (!fs::is_directory(root)) GTEST_SKIP() << "corpus not found at " << root << " (set MAILRAIL_CORPUS_DIR)";
  MessageParser parser;
  Message msg;
  ScratchBuffer again;
  std::size_t attachments = 0;
  for (const fs::path& path : testing::CorpusMessageFiles(root)) {
    msg.Reset();
    msg.raw = testing::ReadFile(path);
    parser.Parse(msg);
    for (const Attachment& a : msg.record.attachments) {
      if (!a.has_sha256) continue;
      ++attachments;
      DecodeAttachment(a, again);
      ASSERT_EQ(again.size(), a.size) << path;
      ASSERT_TRUE(Sha256(again.view()) == a.sha256) << path << ": " << a.filename;
    }
  }
  EXPECT_GT(attachments, 100u);
}

}  // namespace
}  // namespace mailrail::stages
