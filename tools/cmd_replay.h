#pragma once
#include <CLI/CLI.hpp>

namespace mailrail::tools {

// `mailrail replay PATH... [--sink jsonl:FILE] [--rate N] [--pace F] [--format F]`
void AddReplayCommand(CLI::App& app);

}  // namespace mailrail::tools
