"""The contract between the engine (harness) and the algorithms, and the pieces both sides share.

Imports nothing of harness/, algorithms/ or partitions/; all three import it. What lives here:
messages (a client's job, its update, its evaluation), the train spec, flat-parameter vectors and
their layout (ParamSpec), named random streams, and the trainer interface algorithms program against.
"""
