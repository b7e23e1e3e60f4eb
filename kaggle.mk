# Kaggle workflow (included by Makefile). The logic lives in tools/kaggle_ops.py (push-time
# notebook parameters: tools/kaggle_params.py; submission checks: pixelplay_lib/submission.py).
# Order: push-lib -> push-kernel -> kernel-status -> kernel-output -> submit.
#   make push-kernel NB=infer ACCELERATOR=NvidiaTeslaT4 DATASETS="owner/imagenet-weights"
#   make push-kernel NB=train P='-p epochs 30 -p experts imagenet,text,probe'
# P= takes make run-<nb>'s papermill options (-p NAME VALUE, -r NAME VALUE, -y YAML): the
# values are checked against the notebook's parameters cell and pixelplay's Config, then
# injected into the pushed notebook as papermill would (nothing is sent when one is wrong).
# ACCELERATOR defaults to the T4s: Kaggle's default image has no P100 (sm_60) kernels
# (kaggle-cli issue 1151). DOCKER_IMAGE= / PIN=original|latest pick the kernel's image;
# MODELS="owner/model/framework/variation/version ..." attaches Kaggle Models.
# push-lib waits (every POLL s, at most LIB_TIMEOUT s) until Kaggle has processed the new
# version; push-kernel refuses while the lib dataset is missing or not ready.
# submit checks FILE against the X.check.json predict writes beside X.csv, or against the
# competition folder DATA= (unzipped `kaggle competitions download $(COMPETITION)`).
# KAGGLE_USER defaults to the user name in your credentials (the key is never printed).
KAGGLE       ?= $(BIN)/kaggle
KAGGLE_USER  ?=
COMPETITION  ?= vlg-recruitment-24-challenge
NB           ?= train
P            ?=
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
DATA         ?=
MSG          ?=
# POLL (seconds between status checks) / LIB_TIMEOUT: empty = the command's default
# (kernel-status 60 s; push-lib 10 s, at most 900 s).
POLL         ?=
LIB_TIMEOUT  ?=
WAIT         ?=
# RESUME_FROM (train) / TRAIN_KERNEL (infer): unset = <user>/pixelplay-train;
# set empty (RESUME_FROM=) to attach no kernel output.

kaggle_shq = '$(subst ','\'',$(1))'
kaggle_opt = $(if $(filter undefined,$(origin $(1))),,$(2) $(call kaggle_shq,$($(1))))
kaggle_set = $(if $(strip $($(1))),$(2) $(call kaggle_shq,$(strip $($(1)))))
KAGGLE_OPS = $(PY) tools/kaggle_ops.py --kaggle $(call kaggle_shq,$(KAGGLE)) \
	$(call kaggle_set,KAGGLE_USER,--user)

.PHONY: push-lib push-kernel kernel-status kernel-output submit kaggle-user

push-lib: $(STAMP) ## Kaggle: build the wheel, publish/update dataset <user>/pixelplay-lib, wait until ready [MSG= POLL= LIB_TIMEOUT=]
	$(KAGGLE_OPS) push-lib --python $(call kaggle_shq,$(PY)) --src $(call kaggle_shq,$(LIB_SRC)) \
		--stage $(call kaggle_shq,$(KAGGLE_BUILD)/kaggle-lib) --message $(call kaggle_shq,$(MSG)) \
		$(call kaggle_set,POLL,--poll) $(call kaggle_set,LIB_TIMEOUT,--timeout)

push-kernel: $(STAMP) ## Kaggle: push notebooks/<nb>.ipynb as kernel <user>/pixelplay-<nb> (lib dataset must be ready) [NB=train P='-p NAME VALUE' COMPETITION= ACCELERATOR= DATASETS= MODELS= DOCKER_IMAGE= PIN=]
	$(KAGGLE_OPS) push-kernel --nb $(call kaggle_shq,$(NB)) \
		--notebooks $(call kaggle_shq,$(NOTEBOOKS_DIR)) --params $(call kaggle_shq,$(P)) \
		--competition $(call kaggle_shq,$(COMPETITION)) \
		--accelerator $(call kaggle_shq,$(ACCELERATOR)) --datasets $(call kaggle_shq,$(DATASETS)) \
		--models $(call kaggle_shq,$(MODELS)) --docker-image $(call kaggle_shq,$(DOCKER_IMAGE)) \
		--pin $(call kaggle_shq,$(PIN)) \
		--stage $(call kaggle_shq,$(KAGGLE_BUILD)/kernel-$(NB)) \
		$(call kaggle_opt,RESUME_FROM,--resume-from) $(call kaggle_opt,TRAIN_KERNEL,--train-kernel)

kernel-status: $(STAMP) ## Kaggle: status of kernel <user>/pixelplay-<nb>; fails on error [NB= WAIT=1 POLL=]
	$(KAGGLE_OPS) kernel-status --nb $(call kaggle_shq,$(NB)) $(call kaggle_set,POLL,--poll) \
		$(if $(WAIT),--wait)

kernel-output: $(STAMP) ## Kaggle: download the kernel outputs into runs/kaggle-<nb>, check the submissions in them [NB= OUT=]
	$(KAGGLE_OPS) kernel-output --nb $(call kaggle_shq,$(NB)) --out $(call kaggle_shq,$(OUT))

submit: $(STAMP) ## Kaggle: check, then submit runs/kaggle-infer/submission.csv (wrong rows: refused) [FILE= DATA= MSG= COMPETITION=]
	$(KAGGLE_OPS) submit --file $(call kaggle_shq,$(FILE)) --data $(call kaggle_shq,$(DATA)) \
		--competition $(call kaggle_shq,$(COMPETITION)) --message $(call kaggle_shq,$(MSG))

kaggle-user: $(STAMP) ## Kaggle: print the user name the targets use
	@$(KAGGLE_OPS) whoami
