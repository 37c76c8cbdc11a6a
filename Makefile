# modelreg: the two commands (and the benchmarks).
#
#   make demo    install what is missing, build, run the main job
#   make test    install what is missing, build, run every test
#   make bench   install what is missing, build (Release), run the benchmarks
#
# Each target does its own set-up; running them again skips what is done.

BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= 2
CMAKE_FLAGS ?=

.PHONY: all deps build demo test bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) > /dev/null
	@cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	@$(BUILD_DIR)/bin/model_registry_simple

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

bench: build
	@$(BUILD_DIR)/bin/modelreg bench registry
	@$(BUILD_DIR)/bin/modelreg bench transport

clean:
	rm -rf $(BUILD_DIR)
