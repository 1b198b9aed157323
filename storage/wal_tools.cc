#include "storage/wal_tools.h"

#include <fmt/format.h>

#include "storage/checkpoint.h"

namespace mailrail::storage {

base::Result<WalInspection> InspectWal(const std::string& dir) {
  auto listed = ListSegments(dir);
  if (!listed) return listed.error();
  WalInspection inspection;
  auto checkpoint = ReadCheckpoint(dir);
  if (checkpoint) {
    inspection.checkpoint_lsn = checkpoint.value();
  } else {
    inspection.checkpoint_error = checkpoint.error().message;
  }
  for (const auto& [first, name] : listed.value()) {
    auto opened = SegmentReader::Open(dir + "/" + name);
    if (!opened) return opened.error();
    SegmentReader& seg = opened.value();
    SegmentSummary summary;
    summary.name = name;
    summary.file_bytes = seg.file_bytes();
    summary.header_valid = seg.header_valid();
    summary.first_lsn = seg.first_lsn();
    RecordView view;
    while (seg.Next(&view)) {
    }
    summary.records = seg.records();
    summary.last_lsn = seg.header_valid() ? seg.last_lsn() : 0;
    summary.end = seg.end();
    summary.data_bytes = summary.end.offset;
    inspection.records += summary.records;
    if (summary.records > 0) {
      if (inspection.first_lsn == 0) inspection.first_lsn = summary.first_lsn;
      inspection.last_lsn = summary.last_lsn;
    }
    inspection.segments.push_back(std::move(summary));
  }
  return inspection;
}

base::Result<WalVerification> VerifyWal(const std::string& dir) {
  WalVerification verification;
  auto checkpoint = ReadCheckpoint(dir);
  if (checkpoint) {
    verification.checkpoint_lsn = checkpoint.value();
  } else {
    verification.problems.push_back(checkpoint.error().message);
  }
  auto reader = WalReader::Open(dir, {});
  if (!reader) return reader.error();
  RecordView view;
  while (reader->Next(&view)) {
  }
  verification.report = reader->report();
  const WalScanReport& r = verification.report;
  for (const WalDamage& d : r.damage) {
    std::string lost = d.lost_first_lsn == 0 ? std::string("unknown")
                       : d.lost_last_lsn == 0 ? fmt::format("{}..end of segment", d.lost_first_lsn)
                                              : fmt::format("{}..{}", d.lost_first_lsn, d.lost_last_lsn);
    verification.problems.push_back(fmt::format("{}: {} at offset {} ({} bytes after it); LSNs lost: {}", d.segment,
                                                d.what, d.offset, d.bytes_after, lost));
  }
  if (!r.tail_segment.empty()) {
    const std::string line =
        fmt::format("{}: unclean tail at offset {}: {} bytes, {} record headers after it, {} of them valid",
                    r.tail_segment, r.tail_offset, r.tail_bytes_cut, r.tail_records_cut, r.tail_valid_records_after);
    if (r.tail_valid_records_after > 0) {
      verification.problems.push_back(line + " (damage before valid records, not a torn write)");
    } else {
      verification.notes.push_back(line + " (torn write; recovery cuts it, never acknowledged)");
    }
  }
  if (r.last_lsn != 0 && verification.checkpoint_lsn > r.last_lsn) {
    verification.notes.push_back(
        fmt::format("checkpoint {} is past the last record {}", verification.checkpoint_lsn, r.last_lsn));
  }
  return verification;
}

std::string FormatInspection(const WalInspection& inspection) {
  std::string out = fmt::format("{:<28} {:>12} {:>20} {:>20} {:>10} {:>12}  {}\n", "segment", "file bytes",
                                "first lsn", "last lsn", "records", "data bytes", "end");
  for (const SegmentSummary& s : inspection.segments) {
    std::string end;
    if (!s.header_valid) {
      end = "BAD HEADER";
    } else if (s.end.clean) {
      end = "clean";
    } else {
      end = fmt::format("{} at {} ({} bytes after)", s.end.lsn_mismatch ? "lsn_mismatch" : RecordCheckName(s.end.reason),
                        s.end.offset, s.end.bytes_after);
    }
    out += fmt::format("{:<28} {:>12} {:>20} {:>20} {:>10} {:>12}  {}\n", s.name, s.file_bytes, s.first_lsn,
                       s.records > 0 ? fmt::format("{}", s.last_lsn) : std::string("-"), s.records, s.data_bytes,
                       end);
  }
  out += fmt::format("segments: {}  records: {}  lsn range: {}..{}  checkpoint (forwarded through): {}\n",
                     inspection.segments.size(), inspection.records, inspection.first_lsn, inspection.last_lsn,
                     inspection.checkpoint_error.empty() ? fmt::format("{}", inspection.checkpoint_lsn)
                                                         : "DAMAGED: " + inspection.checkpoint_error);
  return out;
}

std::string FormatVerification(const WalVerification& v) {
  std::string out = fmt::format("segments: {}  records: {}  lsn range: {}..{}  checkpoint: {}\n", v.report.segments,
                                v.report.records, v.report.first_lsn, v.report.last_lsn, v.checkpoint_lsn);
  for (const std::string& note : v.notes) out += "note: " + note + "\n";
  for (const std::string& problem : v.problems) out += "CORRUPT: " + problem + "\n";
  out += v.ok() ? "ok\n" : fmt::format("{} problem(s) found\n", v.problems.size());
  return out;
}

}  // namespace mailrail::storage
