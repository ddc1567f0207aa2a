"""The H&E stain table: Ruifrok & Johnston's optical-density vectors, the one copy in the code base.

Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution", Anal. Quant.
Cytol. Histol. 23 (2001): the optical density of a pixel is OD = c_H * h + c_E * e (+ a residual),
OD = -log(I / I0), with the rows below (R, G, B) as h and e. The synthetic cohort composes images
with them (``synth.py``) and the baseline encoder inverts them (``encoders.StainTextureFeatures``).

Not covered: stain vectors estimated per slide (Macenko, Vahadane) and other stain pairs (H-DAB).
"""

from __future__ import annotations

import numpy as np

#: rows H, E: the published optical-density vectors (R, G, B), not normalised
HE_OD = ((0.650, 0.704, 0.286), (0.072, 0.990, 0.105))

#: the same rows normalised to unit length
H_VEC = np.array(HE_OD[0]) / np.linalg.norm(HE_OD[0])
E_VEC = np.array(HE_OD[1]) / np.linalg.norm(HE_OD[1])
