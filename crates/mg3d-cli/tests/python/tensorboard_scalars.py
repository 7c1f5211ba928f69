"""Every scalar in the TensorBoard event files under a directory, read by TensorBoard's own
reader (EventAccumulator), as JSON {tag: [[step, value], ...]} on stdout."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
