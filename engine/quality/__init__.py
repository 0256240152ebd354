"""How good and how consistent an edit is: temporal metrics (``metrics``: TL-ID,
TG-ID, warping error), optical flow (``flow``), face identity embeddings
(``identity``), the published figures they are compared with (``paper``) and the
inline SVG charts of the report (``charts``).

May import ``fsexchange`` and the engine's lower layers (``nets``, ``media``,
``models``, ``faces``, ``devices``); never ``stages``.
"""
