"""Where speech comes from: the embedded SpokenWorld corpus, eSpeak, audio I/O, the dual-stream
model's streams, and a user's own corpora."""
