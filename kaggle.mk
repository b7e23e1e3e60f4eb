# Kaggle workflow (included by Makefile). The logic lives in tools/kaggle_ops.py;
# order: push-lib -> push-kernel -> kernel-status -> kernel-output -> submit.
#   make push-kernel NB=infer ACCELERATOR=NvidiaTeslaT4 DATASETS="owner/imagenet-weights"
# ACCELERATOR defaults to the T4s: Kaggle's default image has no P100 (sm_60) kernels
# (kaggle-cli issue 1151). DOCKER_IMAGE= / PIN=original|latest pick the kernel's image;
# MODELS="owner/model/framework/variation/version ..." attaches Kaggle Models.
# KAGGLE_USER defaults to the user name in your credentials (the key is never printed).
KAGGLE       ?= $(BIN)/kaggle
KAGGLE_USER  ?=
NB           ?= train
ACCELERATOR  ?= NvidiaTeslaT4
DATASETS     ?=
MODELS       ?=
DOCKER_IMAGE ?=
PIN          ?=
NOTEBOOKS_DIR ?= notebooks
KAGGLE_BUILD ?= build
LIB_SRC      ?= .
OUT          ?= runs/kaggle-$(NB)
FILE         ?= runs/kaggle-infer/submission.csv
MSG          ?=
POLL         ?= 60
WAIT         ?=
# RESUME_FROM (train) / TRAIN_KERNEL (infer): unset = <user>/pixelplay-train;
# set empty (RESUME_FROM=) to attach no kernel output.

kaggle_shq = '$(subst ','\'',$(1))'
kaggle_opt = $(if $(filter undefined,$(origin $(1))),,$(2) $(call kaggle_shq,$($(1))))
KAGGLE_OPS = $(PY) tools/kaggle_ops.py --kaggle $(call kaggle_shq,$(KAGGLE)) \
	$(if $(strip $(KAGGLE_USER)),--user $(call kaggle_shq,$(strip $(KAGGLE_USER))))

.PHONY: push-lib push-kernel kernel-status kernel-output submit kaggle-user

push-lib: $(STAMP) ## Kaggle: build the wheel, publish/update dataset <user>/pixelplay-lib
	$(KAGGLE_OPS) push-lib --python $(call kaggle_shq,$(PY)) --src $(call kaggle_shq,$(LIB_SRC)) \
		--stage $(call kaggle_shq,$(KAGGLE_BUILD)/kaggle-lib) --message $(call kaggle_shq,$(MSG))

push-kernel: $(STAMP) ## Kaggle: push notebooks/<nb>.ipynb as kernel <user>/pixelplay-<nb> [NB=train ACCELERATOR= DATASETS= MODELS= DOCKER_IMAGE= PIN=]
	$(KAGGLE_OPS) push-kernel --nb $(call kaggle_shq,$(NB)) \
		--notebooks $(call kaggle_shq,$(NOTEBOOKS_DIR)) \
		--accelerator $(call kaggle_shq,$(ACCELERATOR)) --datasets $(call kaggle_shq,$(DATASETS)) \
		--models $(call kaggle_shq,$(MODELS)) --docker-image $(call kaggle_shq,$(DOCKER_IMAGE)) \
		--pin $(call kaggle_shq,$(PIN)) \
		--stage $(call kaggle_shq,$(KAGGLE_BUILD)/kernel-$(NB)) \
		$(call kaggle_opt,RESUME_FROM,--resume-from) $(call kaggle_opt,TRAIN_KERNEL,--train-kernel)

kernel-status: $(STAMP) ## Kaggle: status of kernel <user>/pixelplay-<nb>; fails on error [NB= WAIT=1]
	$(KAGGLE_OPS) kernel-status --nb $(call kaggle_shq,$(NB)) --poll $(POLL) $(if $(WAIT),--wait)

kernel-output: $(STAMP) ## Kaggle: download the kernel outputs into runs/kaggle-<nb> [NB= OUT=]
	$(KAGGLE_OPS) kernel-output --nb $(call kaggle_shq,$(NB)) --out $(call kaggle_shq,$(OUT))

submit: $(STAMP) ## Kaggle: submit runs/kaggle-infer/submission.csv [FILE= MSG=]
	$(KAGGLE_OPS) submit --file $(call kaggle_shq,$(FILE)) --message $(call kaggle_shq,$(MSG))

kaggle-user: $(STAMP) ## Kaggle: print the user name the targets use
	@$(KAGGLE_OPS) whoami
