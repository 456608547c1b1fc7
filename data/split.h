// data/split.h — the LA-DNN split CSVs: which image, which labels, where on disk.
//
// A split file (data_split/{train,val,test}_meta.csv of the LA-DNN repository) looks like
//
//   imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\r\n
//   2020.01.24.919183-p27-132.png,CVD19,,Csld,,,\r\n
//   91%0.jpg,,,,,,\r\n
//
// A non-empty cell means the label is present (its text is not read; whitespace-only counts as empty).
// CVD19 is the COVID-19 label; the other five are lesions (ground-glass opacities, consolidation,
// crazy paving, air bronchograms, interlobular septal thickening). Only COVID-positive rows carry
// lesion labels. There is no quoting: a cell never holds a comma. Lines may end in CRLF or LF; a
// UTF-8 byte-order mark and blank lines are ignored.
//
// The images live in <data_dir>/CT_COVID/ (COVID rows) and <data_dir>/CT_NonCOVID/ (the others).
#pragma once

#include <array>
#include <string>
#include <vector>

namespace ladnn::data {

/// The lesion columns, in CSV (and lesion-head output) order.
inline constexpr std::array<const char*, 5> kLesionNames = {"GGO", "Csld", "CrPa", "AirBr", "InSepThi"};

/// One row of a split CSV, resolved to an image file.
struct Sample {
  std::string name;                // as written in the CSV, e.g. "2020.01.24.919183-p27-132.png"
  std::string path;                // the image file found for it
  float covid = 0.f;               // 1 when CVD19 is present, else 0
  std::array<float, 5> lesions{};  // 1 per present lesion, in kLesionNames order
  bool has_lesion_labels = false;  // any of the five present (the lesion loss applies only then)
};

/// Reads <data_dir>/data_split/<split>_meta.csv; `split` is "train", "val" or "test".
/// Throws std::invalid_argument for another split name and std::runtime_error for a missing or
/// malformed CSV (naming the file, the line and the column) or a row whose image is in neither
/// CT_COVID/ nor CT_NonCOVID/ (naming the image and the line).
std::vector<Sample> read_split(const std::string& data_dir, const std::string& split);

/// Reads any CSV in the split format, resolving image names under `data_dir` as read_split does
/// (the expected folder first, then the other one).
std::vector<Sample> read_split_csv(const std::string& csv_path, const std::string& data_dir);

/// Where the COVID-CT data is: $LADNN_DATA when set (returned as given, even if it is wrong, so the
/// error names it), else the first of ../shared/data/covid-ct relative to the working directory and
/// relative to the source tree that holds data_split/train_meta.csv. "" when none does (tests then
/// skip with a reason).
std::string find_data_dir();

}  // namespace ladnn::data
