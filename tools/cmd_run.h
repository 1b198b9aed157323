#pragma once
#include <CLI/CLI.hpp>

namespace mailrail::tools {

// `mailrail run [--config FILE]`: the daemon.
void AddRunCommand(CLI::App& app);

}  // namespace mailrail::tools
