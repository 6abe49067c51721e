"""The compiled engine's Python side (issue 14): walk.py compiles v1's types into recipes
for native/walk.c (the capture), place.py compiles (old type -> new type) pairs into
byte operations for native/place.c (the restore).  The Python capture and encoder
stay the reference: wherever a recipe cannot express a shape they run, and the
tests compare the two on every fixture pair.
"""
