#!/bin/sh
# Xcode "Run Script" build phase: run `mobilekit build`, then copy the iOS artifacts into the app bundle.
# Add it before "Copy Bundle Resources"; input file: $(SRCROOT)/mobilekit.toml; output: $(DERIVED_FILE_DIR)/mobilekit.stamp.
# A failed budget or parity check makes mobilekit exit non-zero, which fails the Xcode build with its message.
set -eu
MOBILEKIT="${MOBILEKIT:-mobilekit}"
CONFIG="${MOBILEKIT_CONFIG:-${SRCROOT}/mobilekit.toml}"
OUT_JSON="${DERIVED_FILE_DIR}/mobilekit-build.json"
IOS_TARGETS="${MOBILEKIT_IOS_TARGETS:-iphone-12-pro iphone-15-pro iphone-16-pro iphone-17-pro}"

mkdir -p "${DERIVED_FILE_DIR}"
# MOBILEKIT may be a command with arguments (e.g. "python -m mobilekit.cli.main"), so it is not quoted.
${MOBILEKIT} build --config "${CONFIG}" --json --junit "${DERIVED_FILE_DIR}/mobilekit-junit.xml" > "${OUT_JSON}"

DEST="${TARGET_BUILD_DIR}/${UNLOCALIZED_RESOURCES_FOLDER_PATH}/models"
mkdir -p "${DEST}"
# Copy .mlpackage folders and ExecuTorch (.pte/.ptd) files for iOS targets; Xcode compiles .mlpackage itself
# when it is in the project, so here we only stage them with the manifest.
python3 - "$OUT_JSON" "$CONFIG" "$DEST" "$IOS_TARGETS" <<'PY'
import json, os, shutil, sys
result_path, config, dest, ios = sys.argv[1], sys.argv[2], sys.argv[3], set(sys.argv[4].split())
result = json.load(open(result_path))
out_dir = result["out"]
for model, artifacts in result["artifacts"].items():
    for a in artifacts:
        if not ios & set(a["targets"]):
            continue
        for name in [a["path"], *a["extra_files"]]:
            src, dst = os.path.join(out_dir, model, name), os.path.join(dest, name)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
    shutil.copy2(os.path.join(out_dir, model, "manifest.json"), os.path.join(dest, f"{model}-manifest.json"))
PY
touch "${DERIVED_FILE_DIR}/mobilekit.stamp"
