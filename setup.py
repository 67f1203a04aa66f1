"""Build file for sparsenas_jax."""

import setuptools

setuptools.setup(
    name='sparsenas_jax',
    version='0.2.0',
    description=('Neural Architecture Search as Sparse Supernet (SparseNAS, '
                 'Wu et al. AAAI 2021) in JAX, Flax and Optax.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['sparsenas_jax', 'sparsenas_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        # The set checked together on Python 3.11 (see README, "Versions").
        'jax>=0.10.2,<0.11',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.8',
        'ml-collections>=1.1.0',
        'tensorflow-datasets>=4.9.10',
        'clu>=0.0.12',
        'absl-py>=2.1',
        'numpy>=2.0',
        'scikit-learn>=1.5',
        'matplotlib>=3.8',
    ],
    extras_require={
        # skglm is the independent Sparse Group Lasso solver the tests compare
        # against (WeightedL1GroupL2 + QuadraticGroup + GroupBCD).
        # pytest-xdist: the suite runs in two processes (pytest.ini).
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'skglm==0.5'],
        # TensorFlow is needed to read TFDS datasets (CIFAR, ImageNet).
        'tfds': ['tensorflow-cpu>=2.21'],
        'tpu': ['jax[tpu]>=0.10.2,<0.11'],
    },
)
