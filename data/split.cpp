// data/split.cpp — parsing the LA-DNN split CSVs and locating their images.
#include "data/split.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace ladnn::data {

namespace {

constexpr std::array<const char*, 7> kHeader = {"imgname", "CVD19", "GGO",     "Csld",
                                                "CrPa",    "AirBr", "InSepThi"};

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split_cells(const std::string& line) {
  std::vector<std::string> cells;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    if (comma == std::string::npos) {
      cells.push_back(line.substr(start));
      return cells;
    }
    cells.push_back(line.substr(start, comma - start));
    start = comma + 1;
  }
}

bool file_exists(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

}  // namespace

std::vector<Sample> read_split_csv(const std::string& csv_path, const std::string& data_dir) {
  std::ifstream in(csv_path, std::ios::binary);
  if (!in) throw std::runtime_error("read_split: cannot open '" + csv_path + "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 byte-order mark

  const fs::path covid_dir = fs::path(data_dir) / "CT_COVID";
  const fs::path noncovid_dir = fs::path(data_dir) / "CT_NonCOVID";
  std::vector<Sample> samples;
  bool header_seen = false;
  size_t line_no = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty()) continue;
    std::vector<std::string> cells = split_cells(line);
    const std::string where = "'" + csv_path + "' line " + std::to_string(line_no);

    if (!header_seen) {
      if (cells.size() != kHeader.size())
        throw std::runtime_error("read_split: " + where + ": the header has " + std::to_string(cells.size()) +
                                 " columns, expected 7 (imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi)");
      for (size_t c = 0; c < kHeader.size(); ++c)
        if (trim(cells[c]) != kHeader[c])
          throw std::runtime_error("read_split: " + where + ": header column " + std::to_string(c + 1) +
                                   " is '" + trim(cells[c]) + "', expected '" + kHeader[c] + "'");
      header_seen = true;
      continue;
    }

    if (cells.size() != kHeader.size())
      throw std::runtime_error("read_split: " + where + " has " + std::to_string(cells.size()) +
                               " cells, expected 7");
    Sample s;
    s.name = trim(cells[0]);
    if (s.name.empty()) throw std::runtime_error("read_split: " + where + " has an empty image name");
    s.covid = trim(cells[1]).empty() ? 0.f : 1.f;
    for (size_t k = 0; k < 5; ++k) {
      s.lesions[k] = trim(cells[2 + k]).empty() ? 0.f : 1.f;
      if (s.lesions[k] != 0.f) s.has_lesion_labels = true;
    }
    // COVID rows live in CT_COVID/, the others in CT_NonCOVID/; a file filed in the other folder is
    // still found (the label comes from the CSV, never from the folder).
    const fs::path& first = s.covid != 0.f ? covid_dir : noncovid_dir;
    const fs::path& second = s.covid != 0.f ? noncovid_dir : covid_dir;
    if (file_exists(first / s.name))
      s.path = (first / s.name).string();
    else if (file_exists(second / s.name))
      s.path = (second / s.name).string();
    else
      throw std::runtime_error("read_split: image '" + s.name + "' of " + where + " is in neither '" +
                               covid_dir.string() + "' nor '" + noncovid_dir.string() + "'");
    samples.push_back(std::move(s));
  }
  if (!header_seen) throw std::runtime_error("read_split: '" + csv_path + "' is empty (no header line)");
  return samples;
}

std::vector<Sample> read_split(const std::string& data_dir, const std::string& split) {
  if (split != "train" && split != "val" && split != "test")
    throw std::invalid_argument("read_split: split must be 'train', 'val' or 'test', got '" + split + "'");
  const fs::path csv = fs::path(data_dir) / "data_split" / (split + "_meta.csv");
  return read_split_csv(csv.string(), data_dir);
}

std::string find_data_dir() {
  if (const char* env = std::getenv("LADNN_DATA"); env != nullptr && env[0] != '\0') return env;
  std::vector<fs::path> candidates;
  std::error_code ec;
  fs::path cwd = fs::current_path(ec);
  if (!ec) candidates.push_back(cwd / ".." / "shared" / "data" / "covid-ct");
  // This file is data/split.cpp in the source tree; CMake compiles it by absolute path, so __FILE__
  // names the tree even when the binary runs from elsewhere (build/, ctest).
  fs::path source_root = fs::path(__FILE__).parent_path().parent_path();
  if (!source_root.empty()) candidates.push_back(source_root / ".." / "shared" / "data" / "covid-ct");
  for (const fs::path& c : candidates) {
    if (file_exists(c / "data_split" / "train_meta.csv")) {
      fs::path canon = fs::weakly_canonical(c, ec);
      return (ec ? c : canon).string();
    }
  }
  return "";
}

}  // namespace ladnn::data
