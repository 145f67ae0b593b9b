"""``python -m solo_npu.checkpoints SRC DST --from ...``: the converter CLI."""

from solo_npu.checkpoints.convert import main

raise SystemExit(main())
