# modelreg: the two commands (and the benchmarks).
#
#   make demo    install what is missing, build, run the main job (speech
#                recognition shared by 4 processes)
#   make test    install what is missing, build, run every test
#   make bench   install what is missing, build (Release), run the benchmarks
#
# Each target does its own set-up; running them again skips what is done.

BUILD_DIR ?= build
SANITIZE_DIR ?= build-sanitize
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= 2
CMAKE_FLAGS ?=

.PHONY: all deps build demo test test-sanitize bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) > /dev/null
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# The main job: 4 pipeline-node processes share one speech recogniser held
# by a node (see docs/asr.md); exits non-zero if a transcript is wrong.
demo: build
	@$(BUILD_DIR)/bin/modelreg demo

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)
	@$(MAKE) --no-print-directory test-sanitize

# A second build with clang, AddressSanitizer and UndefinedBehaviorSanitizer:
# every test again (the multi-process ones included) and a bounded libFuzzer
# run of the frame decoder. It is also CI's non-default option combination:
# no benchmarks, examples or Python package.
test-sanitize: deps
	@cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	  -DMODELREG_SANITIZE=ON -DMODELREG_FUZZ=ON \
	  -DMODELREG_BUILD_EXAMPLES=OFF -DMODELREG_BUILD_PYTHON=OFF -DMODELREG_BUILD_BENCH=OFF > /dev/null
	@cmake --build $(SANITIZE_DIR) -j $(JOBS) --target modelreg_tests modelreg_cli frame_fuzz
	@cd $(SANITIZE_DIR) && ctest --output-on-failure -j $(JOBS) -E "^cli\\."

bench: build
	@$(BUILD_DIR)/bin/modelreg bench registry
	@$(BUILD_DIR)/bin/modelreg bench transport
	@for n in 1 4 8; do $(BUILD_DIR)/bin/modelreg bench serve --clients $$n; done
	@$(BUILD_DIR)/bin/modelreg bench serve --clients 8 --in-flight 64
	@$(BUILD_DIR)/bin/modelreg bench serve --protocol shm,grpc,http --clients 8
	@for n in 4 8; do $(BUILD_DIR)/bin/modelreg bench memory --clients $$n; done
	@$(BUILD_DIR)/bin/modelreg bench python
	@for n in 4 8; do $(BUILD_DIR)/bin/modelreg bench streams --streams $$n; done
	@$(BUILD_DIR)/bin/modelreg bench streams --whole
	@$(BUILD_DIR)/bin/modelreg bench cluster --nodes 3 --clients 12
	@$(BUILD_DIR)/bin/modelreg bench placement

clean:
	rm -rf $(BUILD_DIR) $(SANITIZE_DIR)
