// apps/main.cpp — the one `ladnn` binary: subcommands registered by apps/*.cpp.
//
// Library code throws; only here do errors become a message on stderr and a non-zero exit.
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>

#include "apps/apps.h"

int main(int argc, char** argv) {
  CLI::App app{"ladnn — a small C++/CUDA deep-learning framework for LA-DNN COVID-CT diagnosis"};
  app.set_version_flag("--version", std::string("ladnn ") + LADNN_VERSION);
  app.require_subcommand(1);
  ladnn::apps::add_info(app);
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
