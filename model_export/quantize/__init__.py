"""int8 copies of a model directory: `elf-export quantize`.

stages    reduced-precision variants of one stage graph (int8 static QDQ, fp16, ...), same
          float32 interface; calibration inputs of every stage
pipeline  a float32 model directory -> a new verified, recalibrated int8 sibling directory
cli       the `elf-export quantize` parser and its summary
"""
