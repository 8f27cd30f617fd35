#include "cli.h"

int main(int argc, char** argv) { return natgrad::cli::run(argc, argv, nullptr); }
