// apps/apps.h — each subcommand lives in its own apps/<name>.cpp and registers itself here, so adding
// a subcommand touches no other file:
//
//   static const ladnn::apps::Registration kInfo{"info", 0, add_info};   // in apps/info.cpp
//
// main() builds the CLI11 app from the registry (ordered by `order`, then name) and runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace ladnn::apps {

struct Registration {
  /// Adds the subcommand (with its options and callback) to `app`.
  using AddFn = std::function<void(CLI::App& app)>;
  Registration(std::string name, int order, AddFn add);
};

struct Subcommand {
  std::string name;
  int order;
  Registration::AddFn add;
};

/// Every registered subcommand, sorted by (order, name).
std::vector<Subcommand> registered_subcommands();

}  // namespace ladnn::apps
