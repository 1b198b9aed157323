#pragma once
#include <CLI/CLI.hpp>

namespace mailrail::tools {

// `mailrail dlq list [--data-dir D] [--json]` and
// `mailrail dlq redrive --url URL [--data-dir D] [--batch ID] [--ca-file F] [--insecure]`.
void AddDlqCommands(CLI::App& app);

}  // namespace mailrail::tools
