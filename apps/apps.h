// apps/apps.h — each subcommand registers itself on the CLI11 app; its callback does the work.
#pragma once

#include <CLI/CLI.hpp>

namespace ladnn::apps {

/// `ladnn info`: devices, build options, library versions.
void add_info(CLI::App& app);

}  // namespace ladnn::apps
