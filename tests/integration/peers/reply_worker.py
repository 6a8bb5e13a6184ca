"""Receives jobs that carry a caller's reply capability; answers each once, then proves a
second answer through the same capability fails."""

import kernel

with kernel.connect(autostart=False) as k:
    jobs = k.inherited["jobs"]
    msg = jobs.recv(timeout=10.0)
    (reply_cap,) = msg.caps
    assert isinstance(reply_cap, kernel.ReplyCap), reply_cap
    reply_cap.reply(b"worker says: " + msg.data)
    try:
        reply_cap.reply(b"second answer")
        print("SECOND REPLY ACCEPTED")
    except kernel.InvalidCapabilityError as e:
        print(f"SECOND REPLY REFUSED: {e}")
