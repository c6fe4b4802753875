# fa_long — exact attention for ultra-long sequences across MPI ranks and GPUs.
#
#   make            build ./fa_long and the library build/libfa_long.{so,a} (lib/fa_long.h) (CUDA
#                   parts when nvcc is found, left out cleanly when not)
#   make install PREFIX=DIR   the command, the library, fa_long.h and a pkg-config file
#   make deps       install the Debian packages the build and tests need (only those missing)
#   make run        set up, build, and run a small default job end to end (GPU if present)
#   make test       set up, build, and run the test suite (CPU; the README's test command)
#   make test-gpu   GPU tests (on a machine with an NVIDIA GPU)
#   make test-slurm the Slurm tests alone (they start a single-node Slurm)
#   make bench-cpu  CPU engine benchmark (bench/cpu.sh)
#   make plot       install gnuplot where missing, plot bench/results (bench/plot.sh; --report
#                   FILE... plots a run's own reports)
#
# Overridable: CUDA_HOME, NVCC, MPICC, HDF5_CFLAGS, HDF5_LIBS, BLAS_CFLAGS, BLAS_LIBS,
#              NVCC_GENCODE, NCCL_HOME, DEBUG=1, USE_CUDA=0, USE_BLAS=0.

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
MPICC     ?= mpicc
BUILD     ?= build
BIN       ?= fa_long
NVCC_GENCODE ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80

ifeq ($(DEBUG),1)
  OPT = -O0 -g -fsanitize=address,undefined
else
  OPT = -O3 -g -march=native -fno-math-errno
endif
CFLAGS   ?= $(OPT)
CFLAGS   += -std=gnu11 -Wall -Wextra -Wpointer-arith -Wno-unused-parameter -fopenmp -fPIC -I. -MMD -MP
LDLIBS   += -fopenmp -lm -lz

# ---- HDF5: prefer the parallel (Open MPI) build, fall back to serial -----------------------------
HDF5_PC := $(shell for p in hdf5-openmpi hdf5-mpi hdf5-serial hdf5; do pkg-config --exists $$p 2>/dev/null && echo $$p && break; done)
ifeq ($(origin HDF5_CFLAGS),undefined)
  ifneq ($(HDF5_PC),)
    HDF5_CFLAGS := $(shell pkg-config --cflags $(HDF5_PC))
    HDF5_LIBS   := $(shell pkg-config --libs $(HDF5_PC))
  else ifneq ($(wildcard /usr/include/hdf5/openmpi/hdf5.h),)
    HDF5_CFLAGS := -I/usr/include/hdf5/openmpi
    HDF5_LIBS   := -L/usr/lib/x86_64-linux-gnu/hdf5/openmpi -lhdf5
  else ifneq ($(wildcard /usr/include/hdf5/serial/hdf5.h),)
    HDF5_CFLAGS := -I/usr/include/hdf5/serial
    HDF5_LIBS   := -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5
  else
    HDF5_CFLAGS :=
    HDF5_LIBS   := -lhdf5
  endif
endif
HDF5_PARALLEL := $(shell echo | $(MPICC) $(HDF5_CFLAGS) -dM -E -include hdf5.h - 2>/dev/null | grep -c 'define H5_HAVE_PARALLEL 1' | grep -v '^0$$')

# ---- BLAS (OpenBLAS through cblas) for the CPU engine's tile products: optional ----------------
USE_BLAS ?= 1
ifeq ($(USE_BLAS),1)
  BLAS_PC := $(shell pkg-config --exists openblas 2>/dev/null && echo openblas)
  ifneq ($(BLAS_PC),)
    BLAS_CFLAGS ?= $(shell pkg-config --cflags openblas) -DFA_HAVE_CBLAS
    BLAS_LIBS   ?= $(shell pkg-config --libs openblas)
  endif
endif

# ---- CUDA and NCCL: when nvcc is there ------------------------------------------------------
USE_CUDA ?= $(if $(wildcard $(NVCC)),1,0)
NCCL_HOME ?= $(CUDA_HOME)
ifeq ($(USE_CUDA),1)
  CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib))
  NCCL_INC := $(firstword $(wildcard $(NCCL_HOME)/include/nccl.h /usr/include/nccl.h))
  NCCL_LIB := $(firstword $(wildcard $(NCCL_HOME)/lib/libnccl.so $(NCCL_HOME)/lib64/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so))
  CUDA_CFLAGS := -DFA_HAVE_CUDA -I$(CUDA_HOME)/include
  CUDA_LIBS   := -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lstdc++
  ifneq ($(and $(NCCL_INC),$(NCCL_LIB)),)
    CUDA_CFLAGS += -DFA_HAVE_NCCL
    CUDA_LIBS   += -L$(dir $(NCCL_LIB)) -Wl,-rpath,$(dir $(NCCL_LIB)) -lnccl
  endif
endif
NVCCFLAGS ?= -O3 -lineinfo -std=c++17 $(NVCC_GENCODE) -Xptxas=-v --expt-relaxed-constexpr
NVCCFLAGS += -I. -ccbin $(CC_FOR_NVCC) -Xcompiler -fPIC,-Wall,-fopenmp
CC_FOR_NVCC ?= g++

ALL_CFLAGS = $(CFLAGS) $(HDF5_CFLAGS) $(BLAS_CFLAGS) $(CUDA_CFLAGS)
ALL_LIBS   = $(HDF5_LIBS) $(BLAS_LIBS) $(CUDA_LIBS) $(LDLIBS)

# ---- the build's configuration: every object depends on $(BUILD)/.config, rewritten only when the
# flags change (USE_CUDA=0 after a CUDA build, DEBUG=1, another BLAS), so that a build never links
# objects compiled for another configuration ----------------------------------------------------
BUILD_CONFIG := $(strip $(ALL_CFLAGS) | $(NVCCFLAGS) $(CUDA_CFLAGS) | USE_CUDA=$(USE_CUDA))
CONFIG_STAMP := $(BUILD)/.config
# (make's own file function: flags with quotes in them need no shell quoting)
$(shell mkdir -p $(BUILD))
ifneq ($(strip $(file < $(CONFIG_STAMP))),$(BUILD_CONFIG))
  $(file > $(CONFIG_STAMP),$(BUILD_CONFIG))
endif

# ---- sources: every .c of the program's folders; CUDA sources only with nvcc -------------------
C_SRCS  := $(wildcard base/*.c runner/*.c dist/*.c tune/*.c io/*.c kernels/*.c kernels/cpu/*.c lib/*.c)
CU_SRCS := $(if $(filter 1,$(USE_CUDA)),$(wildcard kernels/cuda/*.cu kernels/cuda/inst/*.cu dist/*.cu))
OBJS    := $(C_SRCS:%.c=$(BUILD)/%.o) $(CU_SRCS:%.cu=$(BUILD)/%.cu.o)
LIB_OBJS := $(filter-out $(BUILD)/runner/main.o,$(OBJS))
# the library (lib/fa_long.h): every object but main's; the command is main.o over it
# (libfa_long.a). The shared library computes on the CPU engine alone: with CUDA in the build, its
# objects are the C sources compiled once more without it ($(BUILD)/lib-cpu), so that loading it
# needs neither libcudart nor libnccl.
LIBSO_OBJS := $(if $(filter 1,$(USE_CUDA)),$(patsubst $(BUILD)/%,$(BUILD)/lib-cpu/%,$(filter-out %.cu.o,$(LIB_OBJS))),$(LIB_OBJS))
LIBSO_LIBS := $(if $(filter 1,$(USE_CUDA)),$(HDF5_LIBS) $(BLAS_LIBS) $(LDLIBS),$(ALL_LIBS))
LIBA    := $(BUILD)/libfa_long.a
LIBSO   := $(BUILD)/libfa_long.so
PREFIX  ?= /usr/local
FA_VERSION_STR := $(shell sed -n 's/^\#define FA_VERSION "\(.*\)"/\1/p' base/common.h)

# C test programs: tests/*.c, each linked against the program's objects
TEST_SRCS := $(wildcard tests/*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
# Benchmark programs: bench/*.c, linked the same way
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
# the NCCL baseline of the scaling run (bench/gpu/nccl_baseline.cu), when NCCL is there
ifneq ($(and $(filter 1,$(USE_CUDA)),$(NCCL_INC),$(NCCL_LIB)),)
  BENCH_BINS += $(BUILD)/bench/nccl_baseline
endif

.PHONY: all deps run test test-gpu test-slurm bench-cpu plot clean features install
all: features $(BIN) $(LIBSO) $(TEST_BINS) $(BENCH_BINS)

features:
	@echo "fa_long build features:"
	@echo "  $(if $(filter 1,$(USE_CUDA)),✓,✗) CUDA $(if $(filter 1,$(USE_CUDA)),($(NVCC)),(nvcc not found at $(NVCC)))"
	@echo "  $(if $(and $(filter 1,$(USE_CUDA)),$(NCCL_INC),$(NCCL_LIB)),✓,✗) NCCL"
	@echo "  $(if $(HDF5_PARALLEL),✓ parallel HDF5 (MPI-IO),✗ parallel HDF5: serial HDF5 path) $(HDF5_PC)"
	@echo "  $(if $(BLAS_LIBS),✓ OpenBLAS tile products,✗ OpenBLAS: built-in tile products)"

$(LIBA): $(LIB_OBJS)
	@echo "Archiving $@"
	@rm -f $@ && ar rcs $@ $^

$(LIBSO): $(LIBSO_OBJS)
	@echo "Linking $@"
	@$(MPICC) $(CFLAGS) -shared -Wl,-soname,libfa_long.so -o $@ $^ $(LIBSO_LIBS)

$(BIN): $(BUILD)/runner/main.o $(LIBA)
	@echo "Linking $@"
	@$(MPICC) $(CFLAGS) -o $@ $(BUILD)/runner/main.o -Wl,--whole-archive $(LIBA) -Wl,--no-whole-archive $(ALL_LIBS)

# make install PREFIX=DIR: the command, the library (shared and static), its header and a
# pkg-config file (DIR/lib/pkgconfig/fa_long.pc: cflags and libs, MPI from mpicc)
install: $(BIN) $(LIBA) $(LIBSO)
	@install -d $(PREFIX)/bin $(PREFIX)/lib/pkgconfig $(PREFIX)/include
	@install -m 755 $(BIN) $(PREFIX)/bin/fa_long
	@install -m 644 $(LIBA) $(PREFIX)/lib/libfa_long.a
	@install -m 755 $(LIBSO) $(PREFIX)/lib/libfa_long.so
	@install -m 644 lib/fa_long.h $(PREFIX)/include/fa_long.h
	@printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: fa_long\nDescription: exact attention for ultra-long sequences across MPI ranks (CPU engine library)\nVersion: %s\nCflags: -I$${includedir}\nLibs: -L$${libdir} -Wl,-rpath,$${libdir} -lfa_long\nLibs.private: %s\n' \
		"$(abspath $(PREFIX))" "$(FA_VERSION_STR)" "$(ALL_LIBS)" > $(PREFIX)/lib/pkgconfig/fa_long.pc
	@echo "installed fa_long, libfa_long.{so,a}, fa_long.h and fa_long.pc under $(PREFIX)"

$(BUILD)/%.o: %.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@"
	@$(MPICC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/lib-cpu/%.o: %.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@ (without CUDA, for $(LIBSO))"
	@$(MPICC) $(CFLAGS) $(HDF5_CFLAGS) $(BLAS_CFLAGS) -c -o $@ $<

$(BUILD)/%.cu.o: %.cu $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@"
	@$(NVCC) $(NVCCFLAGS) $(CUDA_CFLAGS) $(HDF5_CFLAGS) -MMD -MP -MF $(BUILD)/$*.cu.d -c -o $@ $< 2> $(BUILD)/$*.cu.ptxas.txt || (cat $(BUILD)/$*.cu.ptxas.txt; exit 1)
	@grep -E "error|warning" $(BUILD)/$*.cu.ptxas.txt | grep -v "ptxas info" || true

$(BUILD)/tests/%: tests/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@"
	@$(MPICC) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJS) $(ALL_LIBS)

$(BUILD)/bench/nccl_baseline: bench/gpu/nccl_baseline.cu
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@"
	@$(NVCC) -O2 -std=c++17 -ccbin $(CC_FOR_NVCC) -I$(dir $(NCCL_INC)) -o $@ $< \
		-L$(dir $(NCCL_LIB)) -Xlinker -rpath,$(dir $(NCCL_LIB)) -lnccl

$(BUILD)/bench/%: bench/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@echo "Compiling $< > $@"
	@$(MPICC) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJS) $(ALL_LIBS)

deps:
	@sh ./deps.sh test

run:
	@sh ./deps.sh run
	@$(MAKE) --no-print-directory all
	@sh ./runner/demo.sh

test: deps
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 -m pytest -q tests --ignore=tests/gpu

test-slurm: deps
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 -m pytest -q tests -m slurm

test-gpu:
	@$(MAKE) --no-print-directory all
	@sh ./tests/gpu/run.sh

bench-cpu: all
	@sh ./bench/cpu.sh

plot:
	@sh ./deps.sh plot
	@sh ./bench/plot.sh

clean:
	rm -rf $(BUILD) $(BIN)

-include $(OBJS:.o=.d) $(if $(filter 1,$(USE_CUDA)),$(LIBSO_OBJS:.o=.d))
