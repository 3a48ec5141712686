"""Config pieces shared by every job (big_vision style: plain functions returning ConfigDicts)."""

import ml_collections


def data_config(**synthetic_overrides) -> ml_collections.ConfigDict:
    """Where the CT data comes from; read by `ldct_jax.data.load_scans`.

    source: 'synthetic' (embedded, built on first use), 'mayo' (TCIA layout under `root`) or
      'dicom' (a pair of full/low dose series folders, `full_dir` and `low_dir`).
    root: data set directory; '' means `<workdir>/data` for the synthetic set.
    """
    synthetic = dict(patients_per_anatomy=2, slices=8, size=512, seed=0)
    synthetic.update(synthetic_overrides)
    return ml_collections.ConfigDict(dict(
        source="synthetic",
        root="",
        full_dir="",
        low_dir="",
        anatomies=("chest", "abdomen", "head"),
        cache_dir="",          # '' -> a cache folder inside the workdir
        skip_bad_slices=False,  # skip unreadable slices (each is logged and counted)
        held_out_patients=1,   # per anatomy, whole patients kept for evaluation
        synthetic=synthetic,
    ))
