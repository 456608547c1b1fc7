// apps/main.cpp — the one `ladnn` binary: subcommands registered by apps/*.cpp (see apps.h).
//
// Library code throws; only here do errors become a message on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <exception>
#include <iostream>

#include "apps/apps.h"

namespace ladnn::apps {

static std::vector<Subcommand>& registry() {
  static std::vector<Subcommand> r;  // function-local: safe from static initialisation order
  return r;
}

Registration::Registration(std::string name, int order, AddFn add) {
  registry().push_back({std::move(name), order, std::move(add)});
}

std::vector<Subcommand> registered_subcommands() {
  std::vector<Subcommand> r = registry();
  std::sort(r.begin(), r.end(), [](const Subcommand& a, const Subcommand& b) {
    return a.order != b.order ? a.order < b.order : a.name < b.name;
  });
  return r;
}

}  // namespace ladnn::apps

int main(int argc, char** argv) {
  CLI::App app{"ladnn — a small C++/CUDA deep-learning framework for LA-DNN COVID-CT diagnosis"};
  app.set_version_flag("--version", std::string("ladnn ") + LADNN_VERSION);
  app.require_subcommand(1);
  for (const auto& sub : ladnn::apps::registered_subcommands()) sub.add(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "ladnn: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
