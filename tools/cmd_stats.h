#pragma once
#include <CLI/CLI.hpp>

namespace mailrail::tools {

// `mailrail stats [--socket PATH | --config FILE] [--json|--prom]` and `mailrail top`.
void AddStatsCommands(CLI::App& app);

}  // namespace mailrail::tools
