"""Pixels in and out: frame-accurate reading and writing of movies, image
sequences and images (``video``; probing itself is ``fsexchange.media``),
compositing a layer over its plate (``composite``) and the real-face sample
clips (``samples``).

May import ``fsexchange`` only (plus numpy, OpenCV, PyAV, OpenEXR); no torch.
"""
