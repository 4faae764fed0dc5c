"""The new-user safety cases of issue 28, each with the test that checks it.

Issue 28 ("Nothing a user wrote is overwritten, nothing hangs, every bad value gets one
line") tried curator as a new user would, in 69 cases: bad inputs, kill -9 in ingest,
scoring, selection, export, curate and the worker, export refusals, concurrency, security,
the training, eval and Ray surfaces, and environment variables. 60 held and 9 did not; it
also found 3 more problems ("Also: ..."). This module lists them all, re-derived from the
issue, so they stay checked: ``tests/safety/test_cases.py`` fails when a listed test no
longer exists, and holds the tests for the cases no other test file covered.

Each case: an id (area letter and number; ``F`` the 9 that failed, ``X`` the 3 extras), the
area, what the user does, what must happen, and the pytest node ids that check it (a test
without parameters stands for all its parametrisations). ``slow`` tests (kill -9, Ray,
second processes) run with ``pytest -m "" tests/safety`` or ``make test-slow``; see
docs/safety.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    action: str
    expected: str
    nodes: tuple[str, ...]


AREAS = {
    "B": "bad inputs",
    "K": "kill -9",
    "E": "export refusals",
    "C": "concurrency",
    "S": "security",
    "T": "training",
    "V": "eval",
    "R": "Ray",
    "N": "environment variables",
    "F": "failed in the issue, fixed",
    "X": "extras found with them, fixed",
}

SAFETY = "tests/safety/test_cases.py"
CLI = "tests/cli/test_commands.py"
INGEST = "tests/ingestion/test_ingest.py"
READERS = "tests/ingestion/test_readers.py"
EXPORT = "tests/outputs/test_subsets.py"
CONFIG = "tests/test_config.py"
STORE = "tests/store/test_store.py"
RECOVERY = "tests/store/test_recovery.py"
SCHEDULE = "tests/schedule/test_schedule.py"
CRASH = "tests/test_crash.py"
CRASH_FORCE = "tests/test_crash_force.py"
TRAINED = "tests/training/test_trained.py"
LORA = "tests/training/test_lora.py"
MODELS = "tests/test_models.py"
RAY = "tests/ray/test_ray_engine.py"
ENV = "tests/test_env.py"
APP_EXPORT = "tests/app/test_exporting.py"


def _c(id_: str, action: str, expected: str, *nodes: str) -> Case:
    return Case(id_, AREAS[id_[0]], action, expected, nodes)


CASES: tuple[Case, ...] = (
    # -- bad inputs: one line each, and the counts add up (read = accepted + duplicates +
    #    quarantined) -----------------------------------------------------------------------
    _c("B01", "ingest a JSONL file with broken rows of every kind",
       "each bad row quarantined with its line and reason; the rest ingested",
       f"{INGEST}::test_every_bad_jsonl_row_is_quarantined_with_line_and_reason"),
    _c("B02", "ingest a CSV file with wrong column counts and bad bytes",
       "those rows quarantined, the rest ingested",
       f"{INGEST}::test_bad_csv_rows_are_quarantined"),
    _c("B03", "ingest text the store cannot encode (lone surrogates)",
       "only that row quarantined, in every format",
       f"{INGEST}::test_text_the_store_cannot_encode_quarantines_its_row_only",
       f"{READERS}::test_lone_surrogates_become_bad_rows_in_every_format"),
    _c("B04", "ingest a file without one usable row",
       "fails in one line, no version made",
       f"{INGEST}::test_input_without_usable_rows_fails_and_creates_no_version",
       f"{CLI}::test_bad_input_exits_1_with_one_line_and_creates_no_version"),
    _c("B05", "ingest a missing file, an unknown format, or into a missing store",
       "one line, exit 1",
       f"{INGEST}::test_missing_file_and_unknown_format",
       f"{CLI}::test_missing_input_and_missing_store"),
    _c("B06", "ingest a missing path that has a slash in it",
       "said to be missing, not looked up on the hub",
       f"{CLI}::test_a_missing_path_with_a_slash_is_not_a_hub_lookup"),
    _c("B07", "ingest a corrupt parquet file on its own",
       "one input error line",
       f"{READERS}::test_corrupt_parquet_is_an_input_error"),
    _c("B08", "ingest the same rows twice, within and across batches",
       "each stored once, counted as duplicates",
       f"{INGEST}::test_duplicates_within_and_across_batches_are_stored_once"),
    _c("B09", "ingest a folder of good, duplicate, empty, corrupt and malformed files",
       "every bad file or row one quarantined row; accepted + duplicates + quarantined = "
       "rows read; members = accepted",
       f"{SAFETY}::test_a_messy_folder_is_ingested_and_its_counts_add_up"),
    _c("B10", "open a store folder whose database is not a database",
       "one clear error, nothing overwritten",
       f"{STORE}::test_a_file_that_is_not_a_database_is_a_clear_error"),
    _c("B11", "misspell a command or option",
       "usage error, exit 2",
       f"{CLI}::test_usage_errors_exit_2"),
    _c("B12", "give bad scoring options to score/select",
       "refused before a model loads",
       f"{CLI}::test_scoring_options_are_checked_before_a_model_loads"),
    _c("B13", "write a recipe with an unknown key or a bad budget",
       "refused with the key's path",
       f"{CONFIG}::test_unknown_keys_name_their_path",
       f"{CONFIG}::test_bad_budgets", f"{CONFIG}::test_file_errors"),
    _c("B14", "export a selection that does not exist",
       "one line, nothing written",
       f"{SAFETY}::test_export_of_an_unknown_selection_writes_nothing"),
    # -- kill -9: every kill resumes to the result of one uninterrupted run -----------------
    _c("K01", "kill -9 during ingest, then rerun",
       "the same versions, members and quarantine as one run",
       f"{CRASH}::test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives",
       f"{INGEST}::test_crash_half_way_leaves_no_half_version"),
    _c("K02", "kill -9 during scoring, then rerun",
       "the same utilities, only the missing pairs scored",
       f"{CRASH}::test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives"),
    _c("K03", "kill -9 during selection, then rerun",
       "the same selections",
       f"{CRASH}::test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives"),
    _c("K04", "kill -9 during export, then rerun",
       "the same export files, no temporary folder left",
       f"{CRASH}::test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives",
       f"{RECOVERY}::test_a_killed_exports_folders_are_removed_or_restored"),
    _c("K05", "kill -9 during `curator curate`, several times, then rerun",
       "the same store contents and exports as one uninterrupted curate",
       f"{SAFETY}::test_kill_9_in_curate_then_rerun_gives_what_one_run_gives"),
    _c("K06", "kill -9 a schedule worker mid-run",
       "the next worker takes the lease and finishes the run",
       f"{CRASH}::test_kill_9_anywhere_then_rerun_gives_what_one_uninterrupted_run_gives",
       f"{SCHEDULE}::test_a_killed_worker_is_recovered_by_the_next"),
    _c("K07", "kill a process with a run open, run another command",
       "the run is marked abandoned (same host, dead pid), live ones are left alone",
       f"{RECOVERY}::test_a_killed_process_is_recovered_by_the_next_command",
       f"{RECOVERY}::test_reused_pids_other_hosts_and_live_processes"),
    _c("K08", "get killed right after an input's version committed, rerun",
       "the file is not ingested a second time",
       "tests/test_runner.py::test_ingest_once_killed_after_the_version_does_not_ingest_again"),
    # -- export refusals --------------------------------------------------------------------
    _c("E01", "export into a folder that exists, without --force",
       "refused, the folder untouched",
       f"{EXPORT}::test_existing_folder_is_not_overwritten_without_force"),
    _c("E02", "export --force into a folder curator did not write",
       "refused with the reason",
       f"{EXPORT}::test_force_refuses_a_folder_that_is_not_a_curator_export"),
    _c("E03", "export --force into an export holding the user's files or an edited manifest",
       "refused, every file kept",
       f"{EXPORT}::test_force_refuses_an_export_holding_the_users_files_or_an_edited_manifest"),
    _c("E04", "export --force into the store, its parent, the working folder or a link",
       "refused; nothing deleted there or through the link",
       f"{EXPORT}::test_force_never_touches_the_store_its_parents_the_cwd_or_a_links_target"),
    _c("E05", "export where a file is, or below a file",
       "refused in one line",
       f"{EXPORT}::test_a_file_where_the_folder_should_be_is_refused"),
    _c("E06", "edit an export's files and verify or load it",
       "the changed files named, loading refused",
       f"{EXPORT}::test_tampering_is_reported_and_refused",
       f"{EXPORT}::test_an_edited_manifest_and_unlisted_files_are_reported"),
    _c("E07", "export a selection whose stored mask was changed",
       "the export stops on the checksum",
       f"{EXPORT}::test_mask_with_a_wrong_checksum_stops_the_export"),
    _c("E08", "export --force over an export nobody changed",
       "replaced",
       f"{EXPORT}::test_force_replaces_an_export_nobody_changed_even_without_a_listed_file"),
    _c("E09", "export under a umask of 022 or 077",
       "folders and files follow the umask",
       f"{EXPORT}::test_export_folders_follow_the_umask"),
    _c("E10", "kill -9 at every file-system step of export --force",
       "the old export or the new one, never a mix; nothing left beside it",
       f"{CRASH_FORCE}::test_kill_9_at_every_step_of_export_force"),
    _c("E11", "export in a format curator does not write",
       "refused, nothing written",
       f"{EXPORT}::test_unknown_format"),
    # -- concurrency ------------------------------------------------------------------------
    _c("C01", "start two schedule workers at once",
       "the run happens once",
       f"{SCHEDULE}::test_two_workers_at_once_run_it_once"),
    _c("C02", "ingest the same rows from two threads",
       "each sample stored once",
       f"{INGEST}::test_ingests_in_two_threads_store_each_sample_once"),
    _c("C03", "read the store while another process writes",
       "the reader gets in between transactions",
       f"{STORE}::test_a_second_process_reads_between_the_writers_transactions"),
    _c("C04", "write while another process holds the store too long",
       "one clear line after the lock timeout; a waiting writer gets in once it is free",
       f"{STORE}::test_a_writer_that_finds_the_store_held_too_long_fails_clearly",
       f"{STORE}::test_a_waiting_writer_gets_in_once_the_holder_lets_go",
       f"{CLI}::test_a_locked_store_fails_with_one_line"),
    _c("C05", "a worker dies holding a schedule's lease",
       "the lease is taken at once (local) or when it expires",
       f"{SCHEDULE}::test_the_lease_of_a_dead_local_process_is_taken_at_once",
       f"{SCHEDULE}::test_an_expired_lease_is_taken_over",
       f"{RECOVERY}::test_a_dead_workers_schedule_lease_is_released"),
    _c("C06", "remove a schedule that is running",
       "refused unless forced",
       f"{SCHEDULE}::test_remove_refuses_a_running_schedule_unless_forced"),
    # -- security ---------------------------------------------------------------------------
    _c("S01", "search samples for text with quotes, % and SQL",
       "matched literally (bound, not spliced into SQL)",
       f"{CLI}::test_show_search_is_literal_text"),
    _c("S02", "ask the app for a sort key holding SQL",
       "refused (sort keys are a fixed list)",
       "tests/app/test_pages.py::test_members_sort_across_all_rows"),
    _c("S03", "load a model whose weights are a pickle holding code",
       "refused in one line, nothing unpickled",
       f"{MODELS}::test_a_pickle_with_code_is_refused_in_one_line"),
    _c("S04", "load a model that needs custom code (trust_remote_code)",
       "refused; the option is off by default",
       f"{MODELS}::test_trust_remote_code_is_off_by_default"),
    _c("S05", "write and read masks",
       "safetensors, not pickle",
       "tests/outputs/test_mask_files.py::test_round_trip_and_metadata"),
    _c("S06", "give curate a recipe with a YAML python tag (or broken YAML, or not UTF-8)",
       "refused in one line; nothing run",
       f"{SAFETY}::test_a_recipe_that_would_run_code_is_refused_in_one_line"),
    _c("S07", "name a schedule with a path in it",
       "refused (a schedule's folder stays in the store)",
       f"{SCHEDULE}::test_add_list_and_validation"),
    # -- training ---------------------------------------------------------------------------
    _c("T01", "train with bad options (steps, learning rate, batch size)",
       "one line before any training",
       "tests/training/test_finetune.py::test_train_bad_input"),
    _c("T02", "train --lora with bad LoRA options, or without peft installed",
       "one line each",
       f"{LORA}::test_cli_train_lora_bad_options_are_one_line",
       f"{LORA}::test_cli_lora_without_peft_is_one_line"),
    _c("T03", "train --force into an output someone changed, a folder train did not write, "
       "or an export",
       "refused with the reason, every file kept",
       f"{TRAINED}::test_force_refuses_an_output_somebody_changed_or_train_did_not_write"),
    _c("T04", "kill -9 at every file-system step of train --force",
       "the old output or the new one; the next train cleans what is left",
       f"{CRASH_FORCE}::test_kill_9_at_every_step_of_train_force",
       f"{TRAINED}::test_a_dead_writers_folders_are_put_back_or_removed"),
    _c("T05", "train on an export whose data the user edited",
       "refused in one line before a model loads, nothing written",
       f"{SAFETY}::test_train_on_an_edited_export_is_refused_before_training"),
    # -- eval -------------------------------------------------------------------------------
    _c("V01", "eval with contradictory options or a bad answer regex",
       "one line",
       f"{CLI}::test_eval_option_errors",
       "tests/training/test_evaluate.py::test_bad_pattern_is_a_one_line_value_error"),
    _c("V02", "eval --data on a file without one usable row",
       "one line naming the file, before any model loads",
       f"{SAFETY}::test_eval_data_without_usable_rows_is_one_line"),
    # -- Ray --------------------------------------------------------------------------------
    _c("R01", "score on Ray",
       "the local engine's utilities; a rerun scores nothing",
       f"{RAY}::test_ray_scores_equal_the_local_engine_then_nothing_new"),
    _c("R02", "kill a Ray worker mid-scoring",
       "its shard retried, the result complete",
       f"{RAY}::test_a_killed_worker_is_retried_and_the_result_is_complete"),
    _c("R03", "kill the Ray driver mid-scoring, rerun",
       "only the missing pairs scored",
       f"{RAY}::test_a_killed_driver_resumes_with_only_the_missing_pairs"),
    _c("R04", "point Ray workers at another model than the driver's",
       "they refuse to score",
       f"{RAY}::test_workers_with_another_model_refuse_to_score"),
    # -- environment variables --------------------------------------------------------------
    _c("N01", "set CURATOR_STORE instead of --store",
       "the store is that folder",
       f"{CLI}::test_store_comes_from_the_environment",
       f"{STORE}::test_default_path_and_lock_timeout_come_from_the_environment"),
    _c("N02", "set CURATOR_LOCK_TIMEOUT to a word or a negative number",
       "one line naming the variable",
       f"{CLI}::test_a_bad_lock_timeout_is_one_line_naming_the_variable",
       f"{STORE}::test_a_bad_lock_timeout_names_the_variable"),
    _c("N03", "ask for --help with a bad variable set",
       "the help, exit 0",
       f"{SAFETY}::test_help_works_with_a_bad_environment_variable"),
    # -- the 9 that failed --------------------------------------------------------------------
    _c("F1", "export --force over an export whose data the user edited",
       "refused, the edited data kept",
       f"{EXPORT}::test_force_refuses_an_export_whose_data_the_user_edited"),
    _c("F2", "train --force into a folder holding an earlier LoRA adapter",
       "the new model alone; no old adapter file left",
       f"{TRAINED}::test_force_over_a_lora_adapter_leaves_no_old_adapter"),
    _c("F3", "export from the app into the store folder, an existing export, a file path, an "
       "unwritable path or a relative path",
       "refused as the CLI refuses, nothing written; a relative path shown absolute",
       f"{APP_EXPORT}::test_refused_destinations_write_nothing_and_say_why",
       f"{APP_EXPORT}::test_a_relative_destination_is_shown_absolute",
       f"{APP_EXPORT}::test_the_page_refuses_in_one_line_and_keeps_the_list"),
    _c("F4", "kill export --force, then run any command",
       "its temp folder (with dataset_info.json) and .X.XXXXXXXX.old removed or put back",
       f"{RECOVERY}::test_a_killed_force_exports_folders_with_dataset_info_are_cleaned",
       f"{EXPORT}::test_every_name_an_export_writes_is_known_to_the_recovery"),
    _c("F5", "cd ex && curator export sel-0001 --store ../store --out . --force",
       "the export replaced, the command succeeds, the shell's folder is the new export",
       f"{EXPORT}::test_cd_into_the_export_and_force_it_with_a_relative_store"),
    _c("F6", "RAY_ADDRESS=127.0.0.1:1 curator score ... --engine ray; kill -9 the driver",
       "one line within CURATOR_RAY_TIMEOUT; the local cluster ends with the driver",
       "tests/ray/test_ray_unreachable.py::test_an_unreachable_address_fails_within_the_timeout",
       "tests/ray/test_ray_unreachable.py::test_the_cli_says_it_in_one_line",
       "tests/ray/test_ray_reaper.py::test_a_killed_drivers_local_cluster_is_gone"),
    _c("F7", "CURATOR_APP_LOCK_TIMEOUT=abc, -5 or nan; CURATOR_CACHE pointing at a file",
       "one line naming the variable, in the CLI and the app",
       f"{ENV}::test_a_bad_number_of_seconds_is_one_line_naming_the_variable",
       f"{ENV}::test_a_cache_that_is_a_file_is_one_line",
       f"{ENV}::test_the_app_says_a_bad_app_lock_timeout_in_one_line",
       f"{ENV}::test_every_variable_curator_reads_is_in_the_table"),
    _c("F8", "ingest a folder holding one empty or corrupt file",
       "that file one quarantined row, the other files ingested",
       f"{INGEST}::test_an_empty_or_corrupt_file_in_a_folder_is_quarantined_and_the_rest_ingested"),
    _c("F9", "ingest rows with more than 5 kinds of problem",
       "the summary says '+N more reasons (M rows)'",
       f"{INGEST}::test_the_summary_says_how_many_more_reasons_there_are"),
    # -- the 3 extras -------------------------------------------------------------------------
    _c("X1", "train under umask 022",
       "every file 0644, safetensors included (they were 0600)",
       f"{TRAINED}::test_force_over_a_lora_adapter_leaves_no_old_adapter"),
    _c("X2", "curator eval --model DIR",
       "DIR unchanged (no hidden .*.sha256); checksums memoised in CURATOR_CACHE",
       f"{SAFETY}::test_eval_leaves_the_model_folder_as_it_was",
       f"{MODELS}::test_fingerprint_files_is_memoised_and_follows_content"),
    _c("X3", "kill a schedule run after it ingested, let the next run resume it",
       "the record says resumed and which version, not '0 new files' and no version",
       f"{SCHEDULE}::test_a_killed_worker_is_recovered_by_the_next"),
)
