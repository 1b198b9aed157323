#pragma once
// `mailrail wal inspect DIR` and `mailrail wal verify DIR`: offline views of a WAL directory
// (storage/wal_tools.h). verify exits 1 when it finds corruption, 2 when DIR cannot be read.

#include <CLI/CLI.hpp>

namespace mailrail::tools {

void AddWalCommands(CLI::App& app);

}  // namespace mailrail::tools
