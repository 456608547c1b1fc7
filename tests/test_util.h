// tests/test_util.h — helpers every test file may use.
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

// Runs `stmt`, expects std::invalid_argument, and checks that its message holds every fragment.
#define EXPECT_THROW_WITH(stmt, ...)                                 \
  do {                                                               \
    std::string msg_ = "<no exception>";                             \
    try {                                                            \
      stmt;                                                          \
    } catch (const std::invalid_argument& e) {                       \
      msg_ = e.what();                                               \
    }                                                                \
    for (const char* frag_ : {__VA_ARGS__})                          \
      EXPECT_NE(msg_.find(frag_), std::string::npos)                 \
          << "message \"" << msg_ << "\" lacks \"" << frag_ << "\""; \
  } while (0)
