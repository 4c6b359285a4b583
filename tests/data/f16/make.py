"""diffusers 0.42.1 in float16 (torch >= 2.15 on the CPU, generator torch.Generator("cpu")) on four recorded
cases: the references of tests/dtype.rs. torch < 2.15 drew float16 noise from a different stream.

    python tests/data/f16/make.py
"""
import torch, numpy as np, json, sys
from diffusers import AutoPipelineForText2Image, AutoPipelineForImage2Image
from PIL import Image
import os
D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..") + "/"
OUT = os.path.dirname(os.path.abspath(__file__))
out={}
for cid in ['sd15-t2i-cfg-neg','sdxl-t2i-cfg-neg-prompt2','sd15-i2i-cfg-neg','sdxl-i2i-cfg-neg']:
    c=json.load(open(D+'cases/'+cid+'/inputs.json'))
    auto = AutoPipelineForText2Image if c['task']=='text2img' else AutoPipelineForImage2Image
    for dt in (torch.float16,):
        p=auto.from_pretrained(D+c['checkpoint'], torch_dtype=dt)
        p.set_progress_bar_config(disable=True)
        kw=dict(prompt=c['prompt'], negative_prompt=c['negative_prompt'], num_inference_steps=c['num_inference_steps'], guidance_scale=c['guidance_scale'], output_type='np', generator=torch.Generator('cpu').manual_seed(c['seed']))
        for k in ('prompt_2','negative_prompt_2','strength','width','height'):
            if c[k] is not None: kw[k]=c[k]
        if c['image']: kw['image']=Image.open(D+c['image']).convert('RGB')
        img=p(**kw).images[0]
        np.save(f'{OUT}/{cid}.npy', img.astype(np.float32))
        ref=np.load(D+'cases/'+cid+'/output.npy')
        print(cid, 'diffusers f16 vs f32 max', float(np.abs(img.astype(np.float32)-ref).max())*255, flush=True)
