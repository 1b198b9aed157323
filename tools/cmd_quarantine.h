#pragma once
#include <CLI/CLI.hpp>

namespace mailrail::tools {

// `mailrail quarantine list [--data-dir D] [--json]`, `mailrail quarantine show ID` (the raw
// message on stdout, its reason on stderr) and `mailrail quarantine redrive --url URL ID...`
// (POSTs each raw message to a running daemon's /ingest marked as a re-drive; the daemon records
// the re-drive in its store when the message reaches the filter).
void AddQuarantineCommands(CLI::App& app);

}  // namespace mailrail::tools
