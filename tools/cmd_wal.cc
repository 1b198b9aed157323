#include "tools/cmd_wal.h"

#include <fmt/core.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "storage/wal_tools.h"

namespace mailrail::tools {

void AddWalCommands(CLI::App& app) {
  auto* wal = app.add_subcommand("wal", "Inspect or verify a write-ahead log directory");
  wal->require_subcommand(1);
  auto dir = std::make_shared<std::string>();

  auto* inspect = wal->add_subcommand("inspect", "List segments, LSN ranges, record counts and the checkpoint");
  inspect->add_option("DIR", *dir, "WAL directory (data dir/wal)")->required();
  inspect->callback([dir] {
    auto inspection = storage::InspectWal(*dir);
    if (!inspection) {
      fmt::print(stderr, "mailrail wal inspect: {}\n", inspection.error().message);
      std::exit(2);
    }
    fmt::print("{}", storage::FormatInspection(*inspection));
  });

  auto* verify = wal->add_subcommand("verify", "Check every checksum and LSN; exit 1 on corruption");
  verify->add_option("DIR", *dir, "WAL directory (data dir/wal)")->required();
  verify->callback([dir] {
    auto verification = storage::VerifyWal(*dir);
    if (!verification) {
      fmt::print(stderr, "mailrail wal verify: {}\n", verification.error().message);
      std::exit(2);
    }
    fmt::print("{}", storage::FormatVerification(*verification));
    if (!verification->ok()) std::exit(1);
  });
}

}  // namespace mailrail::tools
