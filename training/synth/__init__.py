"""The built-in synthetic multi-person keypoint dataset (`scio-pose synth`).

Articulated 3D people with human proportions and joint limits (`body`), dressed and drawn with a
depth buffer and an owner label map (`figure`, `render`), in cluttered scenes with crowds,
occluders and camera effects (`background`, `scene`); labels are read off the label maps
(`labels`); a simulated person detector provides detection boxes (`detections`); `generate`
writes COCO files in parallel, deterministically per seed. Importing this package is cheap.
"""
