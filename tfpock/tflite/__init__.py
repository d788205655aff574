"""Everything that reads or rewrites a .tflite file without TensorFlow.

* :mod:`~tfpock.tflite.model_file`: the flatbuffer read into plain records (operators,
  tensors, signatures), for inspection and checks;
* :mod:`~tfpock.tflite.flatbuffer`: what the file passes share to edit the flatbuffer's object
  API (op codes, constants, packing);
* :mod:`~tfpock.tflite.ir`: :class:`TfliteFile`, the IR the file passes run on;
* :mod:`~tfpock.tflite.memory` and its command :mod:`~tfpock.tflite.memory_cli`: live
  activation bytes per operator, and the arena as the runtime allocates it;
* the file passes, one module each (:mod:`~tfpock.tflite.fuse` with its rules,
  :mod:`~tfpock.tflite.reorder`), run by the second pipeline of ``tfpock/pipeline.py``.

Importable where only numpy, flatbuffers and a TFLite runtime are installed (a device):
``tests/tflite/test_no_tensorflow.py`` imports every module here with TensorFlow blocked.
"""
